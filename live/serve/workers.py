"""Session workers: every WebRTC session runs in a worker, one worker per core.

One Python process holding every peer never used more than one core: the
codecs, colour conversions and the pipeline's glue all take the GIL, so
``bench.capacity`` saw the server top out below one core with a second one
idle. So the control server (HTTP, websocket, these relays) stays one
process, and each session runs in a worker — a child process here
(``ProcessWorker``), a Ray actor with ``--cluster`` (``live.serve.cluster``)
— that owns its peer connection and its pipeline (``live.serve.worker_main``).

A session goes to the least-loaded worker; settings, prompts, reset and
close are relayed to it, and its stats come back every second. A worker
that dies ends only its own sessions (their pages are told and offer again)
and a fresh worker takes its place; the server keeps serving. Workers start
when a session first needs them (``prewarm`` starts them all).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Awaitable, Callable, Protocol

from live.config import Settings
from live.segment import Prompt
from live.serve import protocol
from live.serve.protocol import ProtocolError
from live.serve.session import Session

log = logging.getLogger("live.serve.workers")

MAX_LINE_BYTES = 1 << 22


class WorkerError(RuntimeError):
    """The worker holding a session is gone (the session went with it), or failed."""


class Worker(Protocol):
    """What the pool needs of a worker, wherever it runs."""

    name: str
    sessions: dict[str, RemoteSession]
    alive: bool
    cpu: float
    on_death: Callable[[Worker], None] | None

    async def call(self, op: str, **fields: Any) -> dict[str, Any]: ...

    def adopt(self, session: RemoteSession) -> None: ...

    async def stop(self) -> None: ...


def portable(settings: Settings) -> dict[str, Any]:
    """What a worker needs of the settings: every section but ``server`` (the token
    stays with the control server; a worker serves no page)."""
    sections = settings.to_dict()
    del sections["server"]
    return sections


class RemoteSession:
    """The control server's handle on a session running in a worker: the steering
    surface of ``Session`` (settings, apply, add_prompt, reset, stats, close)."""

    kind = "webrtc"
    describe = Session.describe

    def __init__(self, worker: Worker, session_id: str, settings: Settings,
                 on_close: Callable[[Any], None] | None):
        self.id = session_id
        self.worker = worker
        self.settings = settings  # the last applied; the worker holds the same
        self.on_close = on_close
        self.owner: Any = None
        self.lock = asyncio.Lock()
        self.closed = False
        self.end_reason: str | None = None  # why it ended, when nobody asked it to
        self.latest: dict[str, Any] = {}  # the worker's last stats for it
        self._ended = asyncio.Event()
        self.task: asyncio.Future[Any] = asyncio.ensure_future(self._ended.wait())

    @property
    def running(self) -> bool:
        return not self.closed

    @property
    def frames_out(self) -> int:
        return self.latest.get("frames", 0)

    def stats(self) -> dict[str, Any]:
        return {"session": self.id, "kind": self.kind, **self.latest, "worker": self.worker.name}

    async def apply(self, settings: Settings) -> None:
        await self._call("apply", settings=portable(settings))
        self.settings = settings

    async def add_prompt(self, prompt: Prompt) -> None:
        await self._call("prompt", prompt={"obj_id": prompt.obj_id, "points": prompt.points,
                                           "box": prompt.box,
                                           "clear_old_points": prompt.clear_old_points})

    async def reset(self) -> None:
        await self._call("reset")

    async def close(self) -> None:
        """End it here at once, then in its worker (if that still runs)."""
        if self.closed:
            return
        self.ended(None)
        if self.worker.alive:
            try:
                await self.worker.call("close", session=self.id)
            except WorkerError:
                pass

    def ended(self, reason: str | None) -> None:
        """The session is over (closed, its peer left, or its worker died)."""
        if self.closed:
            return
        self.closed, self.end_reason = True, reason
        self.worker.sessions.pop(self.id, None)
        if self.on_close is not None:
            self.on_close(self)
        self._ended.set()

    async def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.closed:
            raise ProtocolError(f"session {self.id} has ended")
        return await self.worker.call(op, session=self.id, **fields)


# --------------------------------------------------------------------------- workers


class WorkerBase:
    """What every kind of worker does with what comes back: replies, session ends,
    stats, its own death. Subclasses carry the requests (``call``) and ``stop``."""

    def __init__(self, name: str):
        self.name = name
        self.sessions: dict[str, RemoteSession] = {}
        self.alive = False
        self.on_death: Callable[[Worker], None] | None = None
        self.cpu = 0.0  # CPU seconds the worker reported it has used (all its threads)
        # sessions that ended before their open reply was read (and, unavoidably, those
        # the server closed itself: bounded, so a long-running worker does not pile them up)
        self._gone: collections.deque[str] = collections.deque(maxlen=256)
        self._stopping = False

    def adopt(self, session: RemoteSession) -> None:
        self.sessions[session.id] = session
        if session.id in self._gone:  # its peer left while the answer was on its way
            session.ended(None)

    def event(self, msg: dict[str, Any]) -> None:
        """``{"event": "closed", "session"}`` or ``{"event": "stats", "stats": {id: ...}}``."""
        if msg["event"] == "closed":
            session = self.sessions.get(msg["session"])
            if session is None:
                self._gone.append(msg["session"])
            else:
                session.ended(None)
        elif msg["event"] == "stats":
            self.cpu = msg.get("cpu", self.cpu)
            for sid, stats in msg["stats"].items():
                if sid in self.sessions:
                    self.sessions[sid].latest = stats

    def died(self) -> None:
        """The worker is gone: its sessions end, and the pool hears of it unless we stopped it."""
        if not self.alive:
            return
        self.alive = False
        for session in list(self.sessions.values()):
            session.ended(f"its worker ({self.name}) ended")
        if not self._stopping:
            log.warning("worker %s ended unexpectedly; its sessions ended with it", self.name)
            if self.on_death is not None:
                self.on_death(self)  # type: ignore[arg-type]


def unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply: its fields, or its refusal raised as the same kind of error
    (a client's mistake as its own class, whose text the client sees; anything else
    as a WorkerError, whose text stays in the server's log)."""
    if "error" not in reply:
        return reply["ok"]
    from live.serve.server import CLIENT_ERRORS

    kind = next((k for k in CLIENT_ERRORS if k.__name__ == reply.get("kind")), WorkerError)
    raise kind(reply["error"])


class ProcessWorker(WorkerBase):
    """A ``live.serve.worker_main`` child; requests and replies are JSON lines on a
    socket pair, so the child's stdout and stderr stay free for its logs."""

    def __init__(self, name: str, threads: int | None = None):
        super().__init__(name)
        self.threads = threads  # server.worker_threads; None: the libraries' defaults
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "live.serve.worker_main", "--fd", str(theirs.fileno()),
                *(["--threads", str(self.threads)] if self.threads else []),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours, limit=MAX_LINE_BYTES)
        self.pid, self.alive = self._proc.pid, True
        self.name = f"{self.name} (pid {self.pid})"
        self._reader = asyncio.create_task(self._read(reader), name=f"read {self.name}")

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; its reply's fields, or the worker's refusal raised here."""
        if not self.alive or self._writer is None:
            raise WorkerError(f"worker {self.name} is not running")
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        self._writer.write(protocol.dumps({"id": msg_id, "op": op, **fields}).encode() + b"\n")
        await self._writer.drain()
        return unwrap(await future)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if "event" in msg:
                    self.event(msg)
                    continue
                future = self._pending.pop(msg.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(msg)
        except (ConnectionError, ValueError) as exc:
            log.warning("worker %s: %s", self.name, exc)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(WorkerError(f"worker {self.name} ended"))
            self._pending.clear()
            self.died()

    async def stop(self) -> None:
        """Close the socket (the worker closes its sessions and exits); kill it if it lingers."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def start_process_worker(name: str, threads: int | None = None) -> Worker:
    worker = ProcessWorker(name, threads)
    await worker.start()
    return worker


# --------------------------------------------------------------------------- the pool


class WorkerPool:
    """``size`` worker slots; a session goes to the least-loaded one."""

    def __init__(self, size: int,
                 start_worker: Callable[[str], Awaitable[Worker]] = start_process_worker,
                 on_close: Callable[[], None] | None = None):
        self.start_worker = start_worker
        self.on_close = on_close  # after the workers stopped (e.g. leave the Ray cluster)
        self.slots: list[Worker | None] = [None] * size
        self._opening = [0] * size  # offers being answered, per slot
        self._starting: list[asyncio.Task[Worker] | None] = [None] * size
        self._closing = False
        self.restarts = 0
        self._cpu_gone = 0.0  # CPU seconds of the workers that ended
        self.local = True  # the workers run on this machine (not a Ray cluster's nodes)

    @classmethod
    def for_settings(cls, settings: Settings) -> WorkerPool | None:
        """The pool ``server.workers`` asks for: None = sessions in this process."""
        count = settings.server.workers
        if count == 0:
            return None
        if settings.server.cluster:
            from live.serve import cluster

            start = cluster.ray_worker_starter(settings)  # joins the cluster first
            pool = cls(count or cluster.cpus(), start, cluster.shutdown)
            pool.local = False
            return pool
        return cls(count or os.cpu_count() or 1,
                   functools.partial(start_process_worker, threads=settings.server.worker_threads))

    def cpu_seconds(self) -> float:
        """CPU seconds every worker of this pool has used, the ended ones included."""
        return self._cpu_gone + sum(w.cpu for w in self.slots if w is not None)

    def admission_load(self) -> dict[str, Any]:
        """How ``Admission`` measures a frame's cost with sessions in these workers: the
        server's CPU plus theirs. (Ray actors may run on other machines, whose idle CPU
        the server cannot see: there only the session cap applies, Ray places the rest.)"""
        if not self.local:
            return {"measured": False}
        return {"cpu_seconds": lambda: time.process_time() + self.cpu_seconds()}

    def load(self, i: int) -> int:
        worker = self.slots[i]
        return (len(worker.sessions) if worker is not None else 0) + self._opening[i]

    def _place(self) -> int:
        """The least-loaded slot; among equals, one whose worker already runs."""
        return min(range(len(self.slots)), key=lambda i: (self.load(i), self.slots[i] is None, i))

    async def _worker(self, i: int) -> Worker:
        """Slot ``i``'s running worker, started if need be."""
        worker = self.slots[i]
        if worker is not None and worker.alive:
            return worker
        return await asyncio.shield(self._start(i))

    def _start(self, i: int) -> asyncio.Task[Worker]:
        """The start of slot ``i``'s worker: one, however many offers wait on it."""
        task = self._starting[i]
        if task is None:
            task = self._starting[i] = asyncio.ensure_future(self._launch(i))
            task.add_done_callback(_log_failed_start)
        return task

    async def _launch(self, i: int) -> Worker:
        try:
            worker = await self.start_worker(f"worker {i}")
        finally:
            self._starting[i] = None
        worker.on_death = lambda w: self._on_death(i, w)
        self.slots[i] = worker
        return worker

    async def open(self, settings: Settings, sdp: str, *, passthrough: bool = False,
                   bind_host: str = "0.0.0.0", on_close: Callable[[Any], None] | None = None
                   ) -> tuple[RemoteSession, str]:
        """Answer ``sdp`` in the least-loaded worker (its media sockets on ``bind_host``);
        the session and the answer SDP."""
        i = self._place()
        self._opening[i] += 1
        try:
            worker = await self._worker(i)
            reply = await worker.call("open", settings=portable(settings), sdp=sdp,
                                      passthrough=passthrough, bind_host=bind_host)
        finally:
            self._opening[i] -= 1
        session = RemoteSession(worker, reply["session"], settings, on_close)
        worker.adopt(session)
        return session, reply["answer"]

    def prewarm(self) -> None:
        """Start every worker now, in the background, rather than at its first session
        (one that fails is logged, and tried again when a session needs it)."""
        for i, worker in enumerate(self.slots):
            if worker is None or not worker.alive:
                self._start(i)

    def _on_death(self, i: int, worker: Worker) -> None:
        if self.slots[i] is worker:
            self.slots[i] = None
            self._cpu_gone += worker.cpu
        if not self._closing:  # a fresh worker, ready for the pages that offer again
            self.restarts += 1
            self._start(i)

    async def close(self) -> None:
        """Stop every worker, those still starting included."""
        self._closing = True
        starting = [t for t in self._starting if t is not None]
        started = await asyncio.gather(*starting, return_exceptions=True)
        workers = {id(w): w for w in [*self.slots, *started] if isinstance(w, WorkerBase)}
        self.slots = [None] * len(self.slots)
        await asyncio.gather(*(w.stop() for w in workers.values()), return_exceptions=True)
        if self.on_close is not None:
            self.on_close()


def _log_failed_start(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a session worker did not start: %s", task.exception())
