"""``live serve``: the web page, its control websocket, and one pipeline per WebRTC peer.

One asyncio server (the ``websockets`` library) on one port does everything:

* ``GET /`` and the other files of ``web_client/`` (static, confined to that folder);
* ``GET /ws?token=...``: the control websocket. The JSON protocol is in
  ``live/serve/protocol.py`` and docs/protocol.md; WebRTC signalling is one message on
  it (``offer`` → an ``ok`` reply carrying the answer; no trickle ICE: both
  sides gather their candidates before sending, which on a LAN or loopback
  takes milliseconds).

Each WebRTC peer gets a ``Session``: its incoming video track → ``TrackSource``
→ ``Pipeline`` (its own worker thread) → ``VideoOutputTrack`` sent back to the
same peer; incoming audio is sent straight back. A session ends when its peer
connection fails or closes, when its track ends, or when the websocket that
created it goes away; everything it held (tracks, thread, model) goes with it.
Sessions run in worker processes, one per core (``live.serve.workers``;
``server.workers = 0`` keeps them in this process): this server answers the
page and relays each session's messages to the worker that holds it.

``live run`` attaches its virtual-camera pipeline with ``ControlServer(settings,
sessions={"run": (processor, pipeline)})`` (or a list of ``Session``), so the
same page steers it.

Security (``http.py``, ``protocol.py``): loopback only unless
``server.allow_remote``; a random token (printed in the URL, as Jupyter does)
guards the websocket; a browser's Origin must be the page's own; message sizes
and rates are bounded per connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from live.checkpoints import ModelMissingError, require_sam2_checkpoint
from live.composite import BackgroundError, Compositor
from live.config import LOOPBACK_HOSTS, Settings, SettingsError
from live.config import schema as config_schema
from live.pipeline import FrameProcessor, Pipeline
from live.segment import PromptError, resolve_engine_name
from live.serve import protocol
from live.serve.admission import Admission
from live.serve.http import WEB_ROOT, HttpGate
from live.serve.media import MediaFiles
from live.serve.protocol import ProtocolError
from live.serve.session import Client, Session, client_settings
from live.serve.uploads import Uploads
from live.serve.workers import WorkerPool
from live.signals import install_stop_signals

log = logging.getLogger("live.serve")

# Refusals whose text is written for the client. Anything else is a bug or an
# internal failure: the client gets a reference to the log, never its text
# (an IndexError, torch's unpickling error or a KeyError said too much).
CLIENT_ERRORS = (ProtocolError, SettingsError, BackgroundError, PromptError, ModelMissingError)
NOT_STEERABLE = ("no session {sid!r} that this connection may steer: a session is steered by "
                 "the page that started it, any other (e.g. `live run`'s) with the operator's "
                 "token")


class ControlServer:
    """The HTTP + websocket server; see the module docstring.

    ``passthrough=True`` makes every peer's pipeline return frames untouched
    (same code path otherwise): the latency baseline for ``bench.webrtc``.
    """

    def __init__(self, settings: Settings,
                 sessions: Iterable[Session] | Mapping[str, tuple[FrameProcessor, Pipeline]] = (),
                 *,
                 web_root: Path = WEB_ROOT, passthrough: bool = False,
                 rate: float = 50.0, burst: float = 100.0, stats_interval: float = 1.0,
                 max_peers: int = 8, max_clients: int = 32, admission: Admission | None = None):
        self.settings = settings
        self.token = settings.server.token or secrets.token_urlsafe(24)
        self.operator_token = settings.server.operator_token or secrets.token_urlsafe(24)
        self.gate = HttpGate(self.token, web_root, settings.server.allow_remote,
                             operator_token=self.operator_token)
        self.passthrough = passthrough
        self.rate, self.burst = rate, burst
        self.stats_interval = stats_interval
        self.max_peers, self.max_clients = max_peers, max_clients
        self._opening = 0  # offers being answered: counted against max_peers already
        self._stats: list[tuple[Session, dict[str, Any]]] = []
        self._stats_at = -float("inf")
        self.sessions: dict[str, Session] = {}
        self.clients: set[Client] = set()
        self.received: collections.Counter[str] = collections.Counter()  # by message type
        self.port: int | None = None
        self._server: Server | None = None
        self.uploads = Uploads()
        self.media = MediaFiles(self.uploads, settings.server.media_dir)
        self.workers = WorkerPool.for_settings(settings)  # None: sessions run in this process
        # max_peers: the cap on top; the frames' CPU is this process's plus its workers'
        self.admission = admission or Admission(max_peers, **(
            self.workers.admission_load() if self.workers is not None else {}))
        self._watchers: list[asyncio.Task[None]] = []
        self._peer_tasks: set[asyncio.Task[None]] = set()
        if isinstance(sessions, Mapping):  # {"run": (processor, pipeline)} from `live run`
            sessions = [Session(proc, pipe, kind=name, session_id=name)
                        for name, (proc, pipe) in sessions.items()]
        for session in sessions:
            self.attach(session)

    # ------------------------------------------------------------------ lifecycle

    def attach(self, session: Session) -> Session:
        """Expose an existing pipeline (e.g. the virtual camera's) to the control panel."""
        self.sessions[session.id] = session
        return session

    async def start(self) -> None:
        """Bind and start serving; returns at once (the server runs on the current loop)."""
        server = self.settings.server
        self._server = await ws_serve(
            self._handle_connection, server.host, server.port,
            process_request=self._process_request, max_size=protocol.MAX_MESSAGE_BYTES,
            max_queue=2, compression=None, ping_interval=20, ping_timeout=20,
            open_timeout=5)  # an idle TCP connection without a handshake goes after 5 s
        self.port = self._server.sockets[0].getsockname()[1]
        self._watchers = [asyncio.create_task(self.admission.watch_loop()),
                          asyncio.create_task(self._sample_load())]
        if server.host not in LOOPBACK_HOSTS:  # only possible with allow_remote (config checks)
            print(f"live: WARNING: listening on {server.host}:{self.port}, reachable from the "
                  "network; anyone with the token can see and steer the video sessions",
                  file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        """The page's link: it starts and steers its own video sessions."""
        return self._url(self.token)

    @property
    def operator_url(self) -> str:
        """The operator's link: also sees and steers every other session (`live run`'s)."""
        return self._url(self.operator_token)

    def _url(self, token: str) -> str:
        host = self.settings.server.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={token}"

    async def _sample_load(self, interval: float = 0.5) -> None:
        """Feed admission the frames processed so far, per session, twice a second."""
        while True:
            self.admission.sample({s.id: s.frames_out for s in self.sessions.values()
                                   if s.running})
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Close every peer session and connection; attached sessions are left to their owner."""
        for session in list(self.sessions.values()):
            if session.kind == "webrtc":
                await session.close()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self._server is not None:
            self._server.close()  # ends every control connection, hence their sessions
            await self._server.wait_closed()
        pending = [t for t in self._peer_tasks if not t.done()]
        if pending:  # sessions closing on their own (peer gone) finish first
            await asyncio.wait(pending, timeout=10)
        self._server = None
        if self.workers is not None:
            await self.workers.close()
        self.uploads.close()

    def _forget(self, session: Session) -> None:
        """A peer session closed: it is no longer listed, nor its client's."""
        self.sessions.pop(session.id, None)
        if session.owner is not None and session.owner.session is session:
            session.owner.session = None
        reason = getattr(session, "end_reason", None)  # its worker died: the page offers again
        if reason and session.owner is not None:
            self._notify(session.owner, {"type": "session.ended", "session": session.id,
                                         "reason": reason})

    def _notify(self, client: Client, message: dict[str, Any]) -> None:
        """Push ``message`` to ``client`` unasked (as stats are); a gone client misses it."""
        async def send() -> None:
            try:
                await client.ws.send(protocol.dumps(message))
            except ConnectionClosed:
                pass

        task = asyncio.create_task(send())
        self._peer_tasks.add(task)
        task.add_done_callback(self._peer_tasks.discard)

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        refusal = self.gate.answer(conn, request)
        if refusal is None and len(self.clients) >= self.max_clients:
            return conn.respond(503, "Too many control connections\n")
        return refusal

    # ------------------------------------------------------------------ websocket

    async def _handle_connection(self, ws: ServerConnection) -> None:
        query = ws.request.path.partition("?")[2] if ws.request is not None else ""
        client = Client(ws, self.settings, self.rate, self.burst,
                        operator=self.gate.is_operator(query))
        self.clients.add(client)
        pusher = asyncio.create_task(self._push_stats(client))
        try:
            async for raw in ws:
                reply = await self._reply(client, raw)
                await ws.send(protocol.dumps(reply))
        except ConnectionClosed:
            pass  # a vanished client, or a message over the size limit (close code 1009)
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
            self.clients.discard(client)
            if client.session is not None:
                await client.session.close()

    async def _reply(self, client: Client, raw: str | bytes) -> dict[str, Any]:
        """The reply to one message; every failure becomes an error reply, never a crash."""
        if not client.limiter.allow():
            return protocol.error(None, f"too many messages (limit {self.rate:g} per second); "
                                       "this one was dropped")
        if not client.bytes.allow(len(raw)):
            return protocol.error(None, f"too much data (limit {protocol.BYTES_PER_SECOND >> 20} "
                                        "MiB a second per connection); this message was dropped")
        msg_id = None
        try:
            protocol.screen(raw)  # what would stall the loop is refused unparsed
            if len(raw) > protocol.MAX_CONTROL_BYTES:  # only an upload; parsed off the loop
                msg_id, msg = await asyncio.to_thread(protocol.parse_message, raw)
            else:
                msg_id, msg = protocol.parse_message(raw)
            self.received[msg["type"]] += 1
            handler = getattr(self, "_on_" + msg["type"].replace(".", "_"))
            return protocol.ok(msg_id, **await handler(client, msg))
        except ProtocolError as exc:
            return protocol.error(exc.msg_id if msg_id is None else msg_id, str(exc))
        except CLIENT_ERRORS as exc:
            log.info("request refused: %s", exc)
            return protocol.error(msg_id, str(exc) or type(exc).__name__)
        except Exception:  # a bug or an internal failure: its text stays in the log
            ref = secrets.token_hex(4)
            log.exception("request failed (reference %s)", ref)
            return protocol.error(msg_id, f"internal error (reference {ref} in the server's "
                                          "log)")

    async def _push_stats(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            stats = [dict(st, own=s.owner is client) for s, st in self._running_stats()
                     if client.may_steer(s)]
            try:
                await client.ws.send(protocol.dumps({"type": "stats", "sessions": stats}))
            except ConnectionClosed:
                return

    def _running_stats(self) -> list[tuple[Session, dict[str, Any]]]:
        """Each running session's stats, computed once per tick however many clients
        are pushed them (a snapshot costs ~0.4 ms, on the event loop)."""
        now = time.monotonic()
        if now - self._stats_at >= self.stats_interval / 2:
            self._stats = [(s, s.stats()) for s in self.sessions.values()
                           if s.running]
            self._stats_at = now
        return self._stats

    def _target(self, client: Client, msg: dict[str, Any], *, required: bool) -> Session | None:
        """The session a message means: the one it names, else the client's own."""
        sid = protocol.optional_session(msg)
        if sid is not None:
            session = self.sessions.get(sid)
            if session is None or not client.may_steer(session):  # one text: no probing
                raise ProtocolError(NOT_STEERABLE.format(sid=sid))
            return session
        if client.session is None and required:
            raise ProtocolError(f"{msg['type']}: no video session yet; start the camera "
                                "(offer) or name a session from sessions.list")
        return client.session

    # ------------------------------------------------------------------ messages

    async def _on_hello(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        from live import __version__

        return {"server": "live", "version": __version__,
                "session": client.session.id if client.session else None,
                "settings": self._view(self._settings_of(client, client.session)),
                "schema": config_schema(protocol.CLIENT_SECTIONS),
                "sessions": self._visible(client),
                "operator": client.operator,
                "media": self.media.names(),
                "passthrough": self.passthrough,
                # the page's camera and sender caps
                "webrtc": dataclasses.asdict(self.settings.webrtc.resolved()),
                "limits": {"control_bytes": protocol.MAX_CONTROL_BYTES,
                           "upload_bytes": protocol.MAX_UPLOAD_BYTES,
                           "image_pixels": protocol.MAX_IMAGE_PIXELS,
                           "messages_per_second": self.rate},
                "message_types": list(protocol.MESSAGE_TYPES)}

    def _settings_of(self, client: Client, session: Session | None) -> Settings:
        return session.settings if session is not None else client.settings

    def _view(self, settings: Settings) -> dict[str, Any]:
        """What a client sees of settings: its sections, with names instead of paths."""
        return self.media.client_view(client_settings(settings))

    def _visible(self, client: Client) -> list[dict[str, Any]]:
        """The sessions a client is shown: its own; every one for the operator."""
        return [dict(s.describe(client), settings=self._view(s.settings))
                for s in self.sessions.values() if client.may_steer(s)]

    async def _on_settings_get(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        return {"session": session.id if session else None,
                "settings": self._view(self._settings_of(client, session))}

    async def _on_settings_set(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        patch = protocol.settings_patch(msg)
        if isinstance(patch.get("background"), dict):  # names → paths, or NOT_AVAILABLE
            patch = dict(patch, background=self.media.resolve(patch["background"]))
        try:
            return await self._apply(client, session, patch)
        except BackgroundError:
            bg = msg["settings"].get("background")
            if not isinstance(bg, dict) or (bg.get("image") is None and bg.get("video") is None):
                raise  # about the session's own file (the operator's): its text is fine
            # the file the client named cannot be used: the same one text as a file that
            # is not there, so nothing is learnt about the server's files
            kind = "video" if bg.get("video") is not None else "image"
            raise ProtocolError(self.media.unavailable(kind, bg.get(kind))) from None

    async def _apply(self, client: Client, session: Session | None,
                     patch: dict[str, Any]) -> dict[str, Any]:
        """Validate through the one schema, then swap between two frames.

        A new engine or background image is built off the event loop (loading a
        model takes seconds) and before anything is swapped, so a refusal leaves
        the session exactly as it was.
        """
        if session is None:
            new = client.settings.merged(patch)
            if "engine" in patch and resolve_engine_name(new.engine) == "sam2":
                require_sam2_checkpoint(new.engine)  # refused now, and nothing loaded
            if "background" in patch and new.background.mode in ("image", "video"):
                # checked now (decoded once, off the loop), not when a session starts
                await asyncio.to_thread(lambda: Compositor(new.background).close())
            client.settings = new
            return {"session": None, "settings": self._view(client.settings)}
        async with session.lock:
            new = session.settings.merged(patch)
            await session.apply(new)
        if session.owner is client:
            client.settings = new
        shown = self._view(new)
        # Every other panel showing this session hears of it (the sender has its reply):
        # two tabs steering one session never disagree about what runs. Only panels that
        # may steer it: another page learns nothing of a session that is not its own.
        broadcast([c.ws for c in self.clients if c is not client and c.may_steer(session)],
                  protocol.dumps({"type": "settings", "session": session.id, "settings": shown}))
        return {"session": session.id, "settings": shown}

    async def _on_prompt(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        prompt = protocol.prompt_from(msg)
        session = self._target(client, msg, required=True)
        assert session is not None
        await session.add_prompt(prompt)  # PromptError (e.g. selfie engine) → error reply
        return {"session": session.id, "obj_id": prompt.obj_id, "points": len(prompt.points)}

    async def _on_reset(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=True)
        assert session is not None
        await session.reset()
        return {"session": session.id}

    async def _on_background_upload(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        blob, suffix = await asyncio.to_thread(protocol.decode_image_upload, msg)
        path = self.uploads.write(blob, suffix)
        try:
            reply = await self._apply(client, session,
                                      {"background": {"mode": "image", "image": str(path)}})
        except BackgroundError as exc:  # e.g. too elongated: the reason, named by its id
            path.unlink(missing_ok=True)
            raise ProtocolError(str(exc).replace(str(path), "the uploaded image")) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        reply["upload"] = path.name  # the id to pick this image again (settings.set)
        in_use = {s.settings.background.image for s in self.sessions.values()}
        in_use |= {c.settings.background.image for c in self.clients}
        self.uploads.adopt(path, in_use)
        return reply

    async def _on_offer(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        sdp = protocol.offer_sdp(msg)
        if client.session is not None:  # a new offer replaces this client's old session
            await client.session.close()
        peers = [s for s in self.sessions.values() if s.kind == "webrtc"]
        overloaded = any(s.running and s.stats().get("overloaded") for s in peers)
        refusal = self.admission.refusal(len(peers), self._opening, overloaded)
        if refusal is not None:
            raise ProtocolError(refusal)
        self._opening += 1  # answering takes a while (a model loads): others wait their turn
        try:
            session, answer = await self._open_peer(client.settings, sdp)
        finally:
            self._opening -= 1
        session.owner = client
        client.session = session
        self._peer_tasks.add(session.task)
        session.task.add_done_callback(self._peer_tasks.discard)
        self.sessions[session.id] = session
        return {"session": session.id, "answer": {"type": "answer", "sdp": answer}}

    async def _open_peer(self, settings: Settings, sdp: str) -> tuple[Any, str]:
        """A new peer session, in the least-loaded worker (``live.serve.workers``), or
        in this process with ``--workers 0``; its answer SDP."""
        where = {"passthrough": self.passthrough, "bind_host": self.settings.server.host}
        if self.workers is not None:
            return await self.workers.open(settings, sdp, on_close=self._forget, **where)
        from live.serve.peer import open_peer_session  # aiortc loads only when a peer comes

        return await open_peer_session(settings, sdp, on_close=self._forget, **where)

    async def _on_stats(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=True)
        assert session is not None
        return {"stats": dict(session.stats(), own=session.owner is client)}

    async def _on_sessions_list(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        return {"sessions": self._visible(client)}


# ---------------------------------------------------------------------- entry point


def serve(settings: Settings, passthrough: bool = False) -> None:
    """``live serve``: run until Ctrl-C or SIGTERM, then close every session cleanly
    (and delete the uploaded background images).

    The first line printed is ``live: serving on URL`` (bench.webrtc reads it).
    """

    _raise_open_files_limit()

    async def main() -> None:
        server = ControlServer(settings, passthrough=passthrough)
        try:
            await server.start()
        except OSError as exc:
            where = f"{settings.server.host}:{settings.server.port}"
            raise SettingsError(f"cannot listen on {where} ({exc.strerror or exc}): is another "
                                "`live serve` running there? Pick another --port") from None
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        print(f"live: serving on {server.url}\nlive: open that URL in a browser "
              "(Ctrl-C stops)", flush=True)
        print(f"live: operator URL (also sees and steers every session): "
              f"{server.operator_url}", flush=True)
        if server.workers is not None:  # the first page need not wait for its worker
            server.workers.prewarm()
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    print("live: stopped", flush=True)


def _raise_open_files_limit() -> None:
    """Soft limit on open files up to the hard one: 1,290 idle TCP connections once ran
    a server out of descriptors at the usual soft limit of 1,024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # Windows, or not allowed: keep the default
        pass
