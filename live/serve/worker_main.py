"""The worker side of a session worker: the sessions one process (or Ray actor) runs.

``WorkerHost`` owns the aiortc peer connections and pipelines of its sessions,
on its own event loop, so their media work (decode, segment, matte, composite,
encode) never shares a loop or a GIL with the control server or another
worker's sessions. The control server (``live.serve.workers``) relays each
request — open, apply settings, prompt, reset, close — and reads back the
answers, the sessions' stats and their ends.

Run as ``python -m live.serve.worker_main --fd N``: JSON lines over the
inherited socket ``N``. Requests ``{"id", "op", ...}`` get ``{"id", "ok": {...}}``
or ``{"id", "error", "kind"}``; events ``{"event": "closed"|"stats", ...}``
come unasked. The process ends when that socket closes (its server is gone),
after closing every session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, TypeVar

from live.config import Settings
from live.io.worker import limit_threads, name_os_threads
from live.segment import Prompt
from live.serve import protocol

log = logging.getLogger("live.serve.worker")

STATS_INTERVAL_S = 1.0
MAX_LINE_BYTES = 1 << 22
T = TypeVar("T")


class WorkerHost:
    """The sessions of one worker; every public coroutine is one request."""

    def __init__(self, threads: int | None = None) -> None:
        from live.serve.session import Session

        if threads is not None:
            limit_threads(threads)
        self.sessions: dict[str, Session] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def open(self, settings: dict[str, Any], sdp: str, passthrough: bool = False,
                   bind_host: str = "0.0.0.0") -> dict[str, Any]:
        """Answer a peer's offer and start its pipeline here."""
        from live.serve.peer import open_peer_session  # aiortc: loaded once per worker

        session, answer = await open_peer_session(Settings().merged(settings), sdp,
                                                  passthrough=passthrough, bind_host=bind_host,
                                                  on_close=self._closed)
        self.sessions[session.id] = session
        return {"session": session.id, "answer": answer, "pid": os.getpid()}

    async def apply(self, session: str, settings: dict[str, Any]) -> dict[str, Any]:
        await self._get(session).apply(Settings().merged(settings))
        return {}

    async def prompt(self, session: str, prompt: dict[str, Any]) -> dict[str, Any]:
        box = prompt["box"]
        await self._get(session).add_prompt(Prompt(
            obj_id=prompt["obj_id"], points=tuple(tuple(p) for p in prompt["points"]),
            box=None if box is None else tuple(box), clear_old_points=prompt["clear_old_points"]))
        return {}

    async def reset(self, session: str) -> dict[str, Any]:
        await self._get(session).reset()
        return {}

    async def close(self, session: str) -> dict[str, Any]:
        if session in self.sessions:
            await self.sessions[session].close()
        return {}

    def stats(self) -> dict[str, dict[str, Any]]:
        return {sid: s.stats() for sid, s in self.sessions.items() if s.running}

    async def next_events(self, timeout: float = STATS_INTERVAL_S) -> list[dict[str, Any]]:
        """The sessions that ended since the last call, else (after ``timeout``) their stats."""
        try:
            events = [await asyncio.wait_for(self.events.get(), timeout)]
        except asyncio.TimeoutError:
            name_os_threads()  # so top -H (and bench.capacity) tell the stages apart
            return [{"event": "stats", "stats": self.stats(), "cpu": time.process_time()}]
        while not self.events.empty():
            events.append(self.events.get_nowait())
        return events

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())),
                             return_exceptions=True)

    def _get(self, session: str) -> Any:
        try:
            return self.sessions[session]
        except KeyError:
            raise protocol.ProtocolError(f"session {session!r} has ended") from None

    def _closed(self, session: Any) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.events.put_nowait({"event": "closed", "session": session.id})

    async def handle(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One request, by name. A refusal the server would show its client (a bad
        setting, a prompt the engine cannot take) goes back with its text and kind;
        anything else is logged here and goes back as a reference into this log."""
        from live.serve.server import CLIENT_ERRORS

        if op not in ("open", "apply", "prompt", "reset", "close"):
            return {"error": f"unknown worker request {op!r}", "kind": "ProtocolError"}
        try:
            return {"ok": await getattr(self, op)(**fields)}
        except CLIENT_ERRORS as exc:
            return {"error": str(exc) or type(exc).__name__, "kind": type(exc).__name__}
        except Exception:  # a bug or an internal failure: the worker lives on
            ref = secrets.token_hex(4)
            log.exception("worker request %s failed (reference %s)", op, ref)
            return {"error": f"internal error in worker {os.getpid()} (reference {ref} in the "
                             "server's log)", "kind": "internal"}


# --------------------------------------------------------------------------- process main


async def serve_socket(sock: socket.socket, threads: int | None = None) -> None:
    """Answer requests from the control server until it closes the socket."""
    host = WorkerHost(threads)
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE_BYTES)
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            writer.write(protocol.dumps(message).encode() + b"\n")
            await writer.drain()

    async def answer(msg: dict[str, Any]) -> None:
        reply = await host.handle(msg.pop("op", ""), {k: v for k, v in msg.items() if k != "id"})
        await send({"id": msg.get("id"), **reply})

    async def push_events() -> None:
        while True:
            for event in await host.next_events():
                await send(event)

    pusher = asyncio.create_task(push_events())
    pending: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            task = asyncio.create_task(answer(json.loads(line)))  # a model load blocks no other
            pending.add(task)
            task.add_done_callback(pending.discard)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        pusher.cancel()
        for task in pending:
            task.cancel()
        await host.shutdown()
        writer.close()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (not on Windows), else on asyncio's loop.

    A worker's event loop carries its peers' packets: ~14 RTP packets in and
    out per 720p frame, each a datagram, a callback and a hand-off between
    threads. uvloop's C loop did that for 0.19 ms less a frame (9 % of the
    loop thread; two workers of one server, one on each loop, serving a peer
    each in the same windows, four rounds: README, "Scaling"); the rest of
    the thread is aiortc's own Python. The default executor, where aiortc
    encodes, keeps asyncio's thread names (``asyncio_N``) on either loop: the
    threads' names are how ``bench.capacity`` tells the encoder's CPU apart.
    """
    async def named() -> T:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="asyncio"))
        return await main

    try:
        import uvloop
    except ImportError:
        return asyncio.run(named())
    return uvloop.run(named())


def main() -> None:
    parser = argparse.ArgumentParser(description="a live serve session worker (internal)")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the server")
    parser.add_argument("--threads", type=int, help="server.worker_threads")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LIVE_WORKER_LOG", "WARNING"),
                        format=f"%(levelname)s worker {os.getpid()} %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it closes us
    run_loop(serve_socket(socket.socket(fileno=args.fd), args.threads))


if __name__ == "__main__":
    main()
