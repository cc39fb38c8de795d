"""A pipeline the control panel can steer, and the control websocket that steers it.

A session owns what it opened and releases it in ``close()`` — the peer
connection, the pipeline and its task, the outgoing track, helper tasks — the
way an aiortc track owns its ``stop()``. Whoever keeps a list of sessions
learns of a close through ``on_close``; nobody else empties a session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection

from live.config import Settings
from live.pipeline import FrameProcessor, Pipeline
from live.segment import Prompt
from live.serve import protocol

log = logging.getLogger("live.serve.session")


class Session:
    """Either a WebRTC peer's (created and owned here) or one attached from outside
    (``live run``'s virtual camera: its owner runs and stops it; we only steer)."""

    def __init__(self, processor: FrameProcessor, pipeline: Pipeline | None = None, *,
                 kind: str = "attached", session_id: str | None = None, pc: Any = None,
                 output: Any = None, on_close: Callable[[Session], None] | None = None):
        self.id = session_id or secrets.token_hex(4)
        self.kind = kind
        self.processor = processor
        self.pipeline = pipeline
        # the peer connection and the track sent back on it (WebRTC peers only)
        self.pc = pc
        self.output = output
        # told first when the session closes (the server forgets it there)
        self.on_close = on_close
        self.owner: Client | None = None
        self.task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.closed = False
        self.lock = asyncio.Lock()  # settings changes to one session land one at a time

    def describe(self, client: Client | None = None) -> dict[str, Any]:
        return {"session": self.id, "kind": self.kind, "own": client is not None and
                self.owner is client, "settings": client_settings(self.settings)}

    def stats(self) -> dict[str, Any]:
        metrics = self.pipeline.metrics() if self.pipeline is not None else {}
        return {"session": self.id, "kind": self.kind, **metrics}

    # Steering: the surface a session in a worker (live.serve.workers.RemoteSession)
    # shares, so the server relays to either the same way.

    @property
    def settings(self) -> Settings:
        return self.processor.settings

    @property
    def running(self) -> bool:
        return self.pipeline is not None

    @property
    def frames_out(self) -> int:
        return self.pipeline.frames_out if self.pipeline is not None else 0

    async def apply(self, settings: Settings) -> None:
        """Swap to ``settings`` (validated) between two frames; a new model or background
        image is built off the event loop first."""
        await asyncio.to_thread(self.processor.update_settings, settings)

    async def add_prompt(self, prompt: Prompt) -> None:
        self.processor.add_prompt(prompt)  # PromptError (e.g. selfie engine) → error reply

    async def reset(self) -> None:
        self.processor.reset()

    def own(self, task: asyncio.Task[Any]) -> None:
        """A helper task that lives as long as the session (cancelled by ``close``)."""
        self._tasks.append(task)

    def start(self) -> None:
        """Run the pipeline; the session closes when it ends."""
        self.task = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        assert self.pipeline is not None
        try:
            await self.pipeline.run()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the pipeline, tracks, helper tasks and connection; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.on_close is not None:
            self.on_close(self)
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.output is not None:
            self.output.stop()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        task = self.task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            except asyncio.TimeoutError:
                log.warning("session %s: pipeline did not stop in time", self.id)
            except Exception as exc:  # the pipeline's own errors are in its metrics too
                log.warning("session %s: pipeline ended with %r", self.id, exc)
        if self.pipeline is None or self.task is None:
            self.processor.close()  # Pipeline.run closes it otherwise
        log.info("session %s closed", self.id)


class Client:
    """One control websocket: its settings until it has a session, its session, its
    message and byte budgets, and whether it came with the operator's token."""

    def __init__(self, ws: ServerConnection, settings: Settings, rate: float, burst: float,
                 operator: bool = False):
        self.ws = ws
        self.settings = settings
        self.session: Session | None = None
        self.limiter = protocol.RateLimiter(rate, burst)
        self.bytes = protocol.RateLimiter(protocol.BYTES_PER_SECOND, protocol.BYTES_BURST)
        self.operator = operator  # sees and steers every session, not only its own

    def may_steer(self, session: Session) -> bool:
        return self.operator or session.owner is self


def client_settings(settings: Settings) -> dict[str, Any]:
    """The sections a client sees and may change (never ``server``: it holds the token)."""
    full = settings.to_dict()
    return {name: full[name] for name in protocol.CLIENT_SECTIONS}
