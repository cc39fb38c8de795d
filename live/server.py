"""``live serve``: the web page, its control websocket, and one pipeline per WebRTC peer.

One asyncio server (the ``websockets`` library) on one port does everything:

* ``GET /`` and the other files of ``web_client/`` (static, confined to that folder);
* ``GET /ws?token=...``: the control websocket. The JSON protocol is in
  ``live/control.py`` and docs/protocol.md; WebRTC signalling is one message on
  it (``offer`` → an ``ok`` reply carrying the answer; no trickle ICE: both
  sides gather their candidates before sending, which on a LAN or loopback
  takes milliseconds).

Each WebRTC peer gets a ``Session``: its incoming video track → ``TrackSource``
→ ``Pipeline`` (its own worker thread) → ``VideoOutputTrack`` sent back to the
same peer; incoming audio is sent straight back. A session ends when its peer
connection fails or closes, when its track ends, or when the websocket that
created it goes away; everything it held (tracks, thread, model) goes with it.

``live run`` attaches its virtual-camera pipeline with ``ControlServer(settings,
sessions={"run": (processor, pipeline)})`` (or a list of ``Session``), so the
same page steers it.

Security: loopback only unless ``server.allow_remote``; a random token (printed
in the URL, as Jupyter does) guards the websocket; a browser's Origin must be
the page's own; message sizes and rates are bounded per connection.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from live import control
from live.config import LOOPBACK_HOSTS, Settings, SettingsError
from live.config import schema as config_schema
from live.control import ProtocolError
from live.pipeline import FrameProcessor, Pipeline

log = logging.getLogger("live.server")

WEB_ROOT = Path(__file__).resolve().parent.parent / "web_client"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page may talk only to this server; the token in its URL must not leak
# to anyone else through a Referer.
PAGE_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; "
                                "media-src 'self' blob: mediastream:; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
]
TOKEN_REFUSED = (b"Unauthorized: missing or wrong token; open the URL that `live serve` "
                 b"printed (it ends with ?token=...)\n")


class Session:
    """A pipeline the control panel can steer.

    Either a WebRTC peer's (created and owned here) or one attached from outside
    (``live run``'s virtual camera: its owner runs and stops it; we only steer).
    """

    def __init__(self, processor: FrameProcessor, pipeline: Pipeline | None = None, *,
                 kind: str = "attached", session_id: str | None = None):
        self.id = session_id or secrets.token_hex(4)
        self.kind = kind
        self.processor = processor
        self.pipeline = pipeline
        # WebRTC peers only:
        self.pc: Any = None
        self.output: Any = None
        self.owner: Client | None = None
        self.task: asyncio.Task[None] | None = None
        self.extra_tasks: list[asyncio.Task[Any]] = []
        self.closed = False
        self.lock = asyncio.Lock()  # settings changes to one session land one at a time

    def describe(self, client: Client | None = None) -> dict[str, Any]:
        return {"session": self.id, "kind": self.kind, "own": client is not None and
                self.owner is client, "settings": client_settings(self.processor.settings)}

    def stats(self) -> dict[str, Any]:
        metrics = self.pipeline.metrics() if self.pipeline is not None else {}
        return {"session": self.id, "kind": self.kind, **metrics}


class Client:
    """One control websocket: its settings until it has a session, its session, its rate."""

    def __init__(self, ws: ServerConnection, settings: Settings, rate: float, burst: float):
        self.ws = ws
        self.settings = settings
        self.session: Session | None = None
        self.limiter = control.RateLimiter(rate, burst)


def client_settings(settings: Settings) -> dict[str, Any]:
    """The sections a client sees and may change (never ``server``: it holds the token)."""
    full = settings.to_dict()
    return {name: full[name] for name in control.CLIENT_SECTIONS}


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
                 max_peers: int = 8, max_clients: int = 32):
        self.settings = settings
        self.token = settings.server.token or secrets.token_urlsafe(24)
        self.web_root = web_root.resolve()
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
        self._upload_dir: Path | None = None
        self._uploads: collections.deque[Path] = collections.deque()
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
            process_request=self._process_request, max_size=control.MAX_MESSAGE_BYTES,
            max_queue=4, compression=None, ping_interval=20, ping_timeout=20)
        self.port = self._server.sockets[0].getsockname()[1]
        if server.host not in LOOPBACK_HOSTS:  # only possible with allow_remote (config checks)
            print(f"live: WARNING: listening on {server.host}:{self.port}, reachable from the "
                  "network; anyone with the token can see and steer the video sessions",
                  file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        host = self.settings.server.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    async def stop(self) -> None:
        """Close every peer session and connection; attached sessions are left to their owner."""
        for session in list(self.sessions.values()):
            if session.kind == "webrtc":
                await self.close_session(session)
        if self._server is not None:
            self._server.close()  # ends every control connection, hence their sessions
            await self._server.wait_closed()
        pending = [t for t in self._peer_tasks if not t.done()]
        if pending:  # sessions closing on their own (peer gone) finish first
            await asyncio.wait(pending, timeout=10)
        self._server = None
        if self._upload_dir is not None:
            shutil.rmtree(self._upload_dir, ignore_errors=True)
            self._upload_dir = None

    async def close_session(self, session: Session) -> None:
        """Stop a peer's pipeline, tracks and connection; safe to call more than once."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        if session.owner is not None and session.owner.session is session:
            session.owner.session = None
        if session.pipeline is not None:
            session.pipeline.stop()
        if session.output is not None:
            session.output.stop()
        if session.pc is not None:
            await session.pc.close()
        for task in session.extra_tasks:
            task.cancel()
        await asyncio.gather(*session.extra_tasks, return_exceptions=True)
        task = session.task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            except asyncio.TimeoutError:
                log.warning("session %s: pipeline did not stop in time", session.id)
            except Exception as exc:  # the pipeline's own errors are in its metrics too
                log.warning("session %s: pipeline ended with %r", session.id, exc)
        if session.pipeline is None or session.task is None:
            session.processor.close()  # Pipeline.run closes it otherwise
        log.info("session %s closed", session.id)

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/ws-check":
            return self._check_token(query)
        if path != "/ws":
            return self._static(path)
        if not self._origin_allowed(request):
            return conn.respond(403, "Forbidden: this page's origin may not use the control "
                                     "socket\n")
        if not self._token_ok(query):
            return conn.respond(401, TOKEN_REFUSED.decode())
        if len(self.clients) >= self.max_clients:
            return conn.respond(503, "Too many control connections\n")
        return None

    def _token_ok(self, query: str) -> bool:
        token = parse_qs(query).get("token", [""])[0]
        return secrets.compare_digest(token.encode(), self.token.encode())

    def _check_token(self, query: str) -> Response:
        """``GET /ws-check?token=...``: 200 or 401, so the page can tell a stale link
        (the token changes at every start) from a server that is not there; a
        browser sees only code 1006 when the websocket upgrade is refused."""
        if self._token_ok(query):
            return _response(200, b"ok\n", "text/plain; charset=utf-8")
        return _response(401, TOKEN_REFUSED, "text/plain; charset=utf-8")

    def _origin_allowed(self, request: Request) -> bool:
        """No Origin = not a browser (the token suffices); a browser must be same-origin.

        Same-origin alone would let a DNS-rebinding page through (its Origin and
        Host would both say evil.example), so on loopback the host must also be
        a loopback name.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        if origin != f"http://{request.headers.get('Host', '')}":
            return False
        return self.settings.server.allow_remote or urlsplit(origin).hostname in LOOPBACK_HOSTS

    def _static(self, path: str) -> Response:
        not_found = _response(404, b"Not found\n", "text/plain; charset=utf-8")
        rel = unquote(path).lstrip("/") or "index.html"
        if "\x00" in rel or ".." in rel.replace("\\", "/").split("/"):
            return not_found
        try:
            target = (self.web_root / rel).resolve()
            if not target.is_relative_to(self.web_root) or not target.is_file() \
                    or target.suffix not in CONTENT_TYPES:
                return not_found
            return _response(200, target.read_bytes(), CONTENT_TYPES[target.suffix])
        except (OSError, ValueError):
            return not_found

    # ------------------------------------------------------------------ websocket

    async def _handle_connection(self, ws: ServerConnection) -> None:
        client = Client(ws, self.settings, self.rate, self.burst)
        self.clients.add(client)
        pusher = asyncio.create_task(self._push_stats(client))
        try:
            async for raw in ws:
                reply = await self._reply(client, raw)
                await ws.send(control.dumps(reply))
        except ConnectionClosed:
            pass  # a vanished client, or a message over the size limit (close code 1009)
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
            self.clients.discard(client)
            if client.session is not None:
                await self.close_session(client.session)

    async def _reply(self, client: Client, raw: str | bytes) -> dict[str, Any]:
        """The reply to one message; every failure becomes an error reply, never a crash."""
        if not client.limiter.allow():
            return control.error(None, f"too many messages (limit {self.rate:g} per second); "
                                       "this one was dropped")
        msg_id = None
        try:
            msg_id, msg = control.parse_message(raw)
            self.received[msg["type"]] += 1
            handler = getattr(self, "_on_" + msg["type"].replace(".", "_"))
            return control.ok(msg_id, **await handler(client, msg))
        except ProtocolError as exc:
            return control.error(exc.msg_id if msg_id is None else msg_id, str(exc))
        except (ValueError, RuntimeError, OSError) as exc:  # SettingsError, PromptError, ...
            log.info("request refused: %s", exc)
            return control.error(msg_id, str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("request failed")
            return control.error(msg_id, f"internal error ({type(exc).__name__}): {exc}")

    async def _push_stats(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            stats = [dict(st, own=s.owner is client) for s, st in self._running_stats()]
            try:
                await client.ws.send(control.dumps({"type": "stats", "sessions": stats}))
            except ConnectionClosed:
                return

    def _running_stats(self) -> list[tuple[Session, dict[str, Any]]]:
        """Each running session's stats, computed once per tick however many clients
        are pushed them (a snapshot costs ~0.4 ms, on the event loop)."""
        now = time.monotonic()
        if now - self._stats_at >= self.stats_interval / 2:
            self._stats = [(s, s.stats()) for s in self.sessions.values()
                           if s.pipeline is not None]
            self._stats_at = now
        return self._stats

    def _target(self, client: Client, msg: dict[str, Any], *, required: bool) -> Session | None:
        """The session a message means: the one it names, else the client's own."""
        sid = control.optional_session(msg)
        if sid is not None:
            session = self.sessions.get(sid)
            if session is None:
                raise ProtocolError(f"no session {sid!r}; sessions.list names the running ones")
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
                "settings": client_settings(self._settings_of(client, client.session)),
                "schema": config_schema(control.CLIENT_SECTIONS),
                "sessions": [s.describe(client) for s in self.sessions.values()],
                "passthrough": self.passthrough,
                "webrtc": self.settings.to_dict()["webrtc"],  # the page's camera and sender caps
                "limits": {"control_bytes": control.MAX_CONTROL_BYTES,
                           "upload_bytes": control.MAX_UPLOAD_BYTES,
                           "image_pixels": control.MAX_IMAGE_PIXELS,
                           "messages_per_second": self.rate},
                "message_types": list(control.MESSAGE_TYPES)}

    def _settings_of(self, client: Client, session: Session | None) -> Settings:
        return session.processor.settings if session is not None else client.settings

    async def _on_settings_get(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        return {"session": session.id if session else None,
                "settings": client_settings(self._settings_of(client, session))}

    async def _on_settings_set(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        return await self._apply(client, session, control.settings_patch(msg))

    async def _apply(self, client: Client, session: Session | None,
                     patch: dict[str, Any]) -> dict[str, Any]:
        """Validate through the one schema, then swap between two frames.

        A new engine or background image is built off the event loop (loading a
        model takes seconds) and before anything is swapped, so a refusal leaves
        the session exactly as it was.
        """
        if session is None:
            client.settings = client.settings.merged(patch)
            return {"session": None, "settings": client_settings(client.settings)}
        async with session.lock:
            new = session.processor.settings.merged(patch)
            await asyncio.to_thread(session.processor.update_settings, new)
        if session.owner is client:
            client.settings = new
        return {"session": session.id, "settings": client_settings(new)}

    async def _on_prompt(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        prompt = control.prompt_from(msg)
        session = self._target(client, msg, required=True)
        assert session is not None
        session.processor.add_prompt(prompt)  # PromptError (e.g. selfie engine) → error reply
        return {"session": session.id, "obj_id": prompt.obj_id, "points": len(prompt.points)}

    async def _on_reset(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=True)
        assert session is not None
        session.processor.reset()
        return {"session": session.id}

    async def _on_background_upload(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=False)
        blob, suffix = await asyncio.to_thread(control.decode_image_upload, msg)
        if self._upload_dir is None:  # made on first use: a server that never gets one leaves nothing
            self._upload_dir = Path(tempfile.mkdtemp(prefix="live-uploads-"))
        path = self._upload_dir / f"{secrets.token_hex(8)}{suffix}"
        path.write_bytes(blob)
        try:
            reply = await self._apply(client, session,
                                      {"background": {"mode": "image", "image": str(path)}})
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._uploads.append(path)
        self._forget_old_uploads()
        return reply

    def _forget_old_uploads(self, keep: int = 16) -> None:
        """Delete the oldest uploads that no session or client still uses."""
        in_use = {s.processor.settings.background.image for s in self.sessions.values()}
        in_use |= {c.settings.background.image for c in self.clients}
        for path in list(self._uploads)[: max(0, len(self._uploads) - keep)]:
            if str(path) not in in_use:
                self._uploads.remove(path)
                path.unlink(missing_ok=True)

    async def _on_offer(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        from live.peer import open_peer_session  # aiortc loads only when a peer comes

        sdp = control.offer_sdp(msg)
        if client.session is not None:  # a new offer replaces this client's old session
            await self.close_session(client.session)
        peers = sum(1 for s in self.sessions.values() if s.kind == "webrtc") + self._opening
        if peers >= self.max_peers:
            raise ProtocolError(f"too many video sessions ({peers}); close one first")
        self._opening += 1  # answering takes a while (a model loads): others wait their turn
        try:
            session, answer = await open_peer_session(self, client.settings, sdp)
        finally:
            self._opening -= 1
        session.owner = client
        client.session = session
        self._peer_tasks.add(session.task)
        session.task.add_done_callback(self._peer_tasks.discard)
        self.sessions[session.id] = session
        return {"session": session.id, "answer": {"type": "answer", "sdp": answer}}

    async def _on_stats(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        session = self._target(client, msg, required=True)
        assert session is not None
        return {"stats": dict(session.stats(), own=session.owner is client)}

    async def _on_sessions_list(self, client: Client, msg: dict[str, Any]) -> dict[str, Any]:
        return {"sessions": [s.describe(client) for s in self.sessions.values()]}


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", content_type),
                       *PAGE_HEADERS])
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
    return Response(status, reason, headers, body)


# ---------------------------------------------------------------------- entry point


def serve(settings: Settings, passthrough: bool = False) -> None:
    """``live serve``: run until Ctrl-C or SIGTERM, then close every session cleanly
    (and delete the uploaded background images).

    The first line printed is ``live: serving on URL`` (bench.webrtc reads it).
    """

    async def main() -> None:
        server = ControlServer(settings, passthrough=passthrough)
        try:
            await server.start()
        except OSError as exc:
            where = f"{settings.server.host}:{settings.server.port}"
            raise SettingsError(f"cannot listen on {where} ({exc.strerror or exc}): is another "
                                "`live serve` running there? Pick another --port") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not main thread
                pass
        print(f"live: serving on {server.url}\nlive: open that URL in a browser "
              "(Ctrl-C stops)", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    print("live: stopped", flush=True)
