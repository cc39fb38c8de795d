"""Shared pieces of the server tests: a camera-like track made of clip frames, a
running server, and bounded waits. (Not a test module: pytest collects test_*.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from bench import load_frames
from live.serve.client import ControlClient
from live.config import Settings
from live.serve.admission import Admission
from live.serve.server import ControlServer

TEST_SIZE = (640, 360)  # small enough for VP8 both ways on two shared cores


def load_clip(path: Path, count: int, size: tuple[int, int] = TEST_SIZE,
              start: int = 0) -> list[np.ndarray]:
    """``count`` BGR frames of a real clip from frame ``start``, resized to ``size``."""
    return load_frames(path, count, size, start)


class ClipTrack(MediaStreamTrack):
    """A webcam stand-in: clip frames (looped) as av.VideoFrames, paced at ``fps``."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float = 30.0):
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError

            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self._t0 + self.sent / self.fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.frames[self.sent % len(self.frames)],
                                           format="bgr24")
        frame.pts = int(self.sent * 90_000 / self.fps)
        frame.time_base = Fraction(1, 90_000)
        self.sent += 1
        return frame


def test_settings(**sections: dict[str, Any]) -> Settings:
    """The embedded engine, any free port, plus ``sections`` (e.g. background=...)."""
    patch: dict[str, Any] = {"server": {"port": 0, "workers": 0}, "engine": {"name": "selfie"}}
    for name, values in sections.items():
        patch.setdefault(name, {}).update(values)
    return Settings().merged(patch)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def counting_only(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Server arguments whose admission caps the session count only: these tests are
    about other things and run on a loaded, shared machine (admission by measured
    load has its own tests in test_hardening.py)."""
    if "admission" not in kwargs:
        kwargs = dict(kwargs, admission=Admission(kwargs.get("max_peers", 8), measured=False))
    return kwargs


@contextlib.asynccontextmanager
async def running_server(settings: Settings | None = None,
                         **kwargs: Any) -> AsyncIterator[ControlServer]:
    server = ControlServer(settings or test_settings(), **counting_only(kwargs))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll ``condition`` every 50 ms; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def pipeline_threads() -> list[str]:
    """Names of live threads that belong to a peer session's pipeline or sink."""
    return [t.name for t in threading.enumerate() if t.name.startswith("live-peer-")]


async def recv_frames(track: Any, count: int, timeout: float = 20.0) -> list[np.ndarray]:
    """The next ``count`` frames of a received track as BGR arrays."""
    out = []
    for _ in range(count):
        frame = await asyncio.wait_for(track.recv(), timeout)
        out.append(frame.to_ndarray(format="bgr24"))
    return out


class ServerThread:
    """A ControlServer on its own event loop in a thread, so that synchronous code
    (hypothesis, blocking websocket clients, Playwright) can talk to it."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop",
                                       daemon=True)
        self.thread.start()
        self.server = ControlServer(settings or test_settings(), **counting_only(kwargs))
        self.call(self.server.start())

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StreamingPeer:
    """A ControlClient that streams clip frames and counts what comes back, on a
    ServerThread's loop (a second peer, whose video must keep flowing)."""

    def __init__(self, st: ServerThread, frames: list[np.ndarray]):
        self.st = st
        self.received = 0
        self.client = ControlClient(st.server.url)

        async def start() -> None:
            await self.client.connect()
            track = await self.client.start_video(ClipTrack(frames))
            self._task = asyncio.ensure_future(self._pump(track))

        st.call(start())

    async def _pump(self, track: Any) -> None:
        while True:
            await track.recv()
            self.received += 1

    @property
    def session(self) -> str:
        assert self.client.session is not None
        return self.client.session

    def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        """Block until ``count`` more frames came back (proof the session still runs)."""
        target = self.received + count
        deadline = time.monotonic() + timeout
        while self.received < target:
            if time.monotonic() > deadline or self._task.done():
                raise AssertionError(f"video stalled: {self.received} frames, wanted {target}")
            time.sleep(0.05)

    def close(self) -> None:
        async def stop() -> None:
            self._task.cancel()
            await self.client.close()

        self.st.call(stop())
