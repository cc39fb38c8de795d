"""Where composited frames go: a virtual camera, a WebRTC track, a file, a window.

Every sink has the same two coroutines, called by the pipeline exactly so::

    await sink.write(image, frame)   # image: uint8 BGR HxWx3, or BGRA HxWx4 ("transparent")
    await sink.close()               # idempotent; finalises files

Sinks open lazily on the first ``write`` because only then is the frame size
known. Anything that blocks (a device send, an encoder) runs on ONE worker
thread owned by the sink, so the event loop stays free and the sink's own calls
stay in order. ``write`` takes ownership of ``image``: the pipeline must not
write into that array afterwards (the sinks avoid a copy per frame).

Two drop policies, chosen by what the output is for:

- live outputs (virtual camera, preview, WebRTC track) drop a frame when the
  previous one is still being delivered, and count it in ``dropped``: showing
  an old frame late is worse than skipping it;
- the recorder keeps every frame, in order.

A sink that cannot work raises ``SinkError`` saying what failed and how to fix it.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol

import av
import numpy as np
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from live.config import OutputSettings, SettingsError
from live.frames import Frame

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """An output cannot be opened or written; the message says what failed and the fix."""


class Sink(Protocol):
    async def write(self, image: np.ndarray, frame: Frame) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- helpers


def flatten_alpha(image: np.ndarray) -> np.ndarray:
    """BGRA → BGR composited onto black; BGR passes through untouched.

    Onto black rather than "drop the alpha channel": behind alpha 0 the colour
    channels may still hold the original background, which dropping the alpha
    would put back on screen.
    """
    if image.ndim == 3 and image.shape[2] == 4:
        bgr = image[..., :3].astype(np.uint16)
        alpha = image[..., 3:4].astype(np.uint16)
        return ((bgr * alpha + 127) // 255).astype(np.uint8)
    return image


def even_crop(image: np.ndarray) -> np.ndarray:
    """Drop the last column/row of an odd-sized image (a view, no copy).

    YUV 4:2:0 (what v4l2loopback consumers and H.264 use) needs even sizes;
    cropping one pixel is cheaper than padding and invisible.
    """
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] not in (3, 4) or image.shape[0] < 2 or image.shape[1] < 2:
        desc = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise SinkError(f"a sink needs a uint8 BGR (HxWx3) or BGRA (HxWx4) image, got {desc}")
    return image


class _Worker:
    """One dedicated thread per sink: its calls run one at a time, in submission order."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self._pool.submit(fn, *args))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


# --------------------------------------------------------------------------- null


class NullSink:
    """Throws frames away and counts them: the output of benchmarks."""

    def __init__(self) -> None:
        self.frames = 0
        self.last_index: int | None = None
        self.closed = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        self.frames += 1
        self.last_index = frame.index

    async def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- WebRTC


class VideoOutputTrack(MediaStreamTrack):
    """The processed video sent back to a browser; also a Sink the pipeline writes to.

    One slot, newest wins: a frame the encoder has not taken yet is replaced by
    the next one (counted in ``dropped``), so a slow network never builds up
    latency. ``sent`` maps ``frame.index`` → ``time.monotonic()`` when ``recv``
    handed that frame to aiortc (the last ``SENT_HISTORY`` frames), for latency
    measurements.
    """

    kind = "video"
    SENT_HISTORY = 1000

    def __init__(self) -> None:
        super().__init__()
        self._slot: tuple[np.ndarray, Frame] | None = None
        self._ready = asyncio.Event()
        self._clock_start: float | None = None
        self._last_pts: int | None = None
        self.frames = 0
        self.dropped = 0
        self.sent: collections.OrderedDict[int, float] = collections.OrderedDict()

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        """Offer a frame to the peer; a no-op once the track has ended (peer gone)."""
        _check_image(image)
        if self.readyState != "live":
            return
        if self._slot is not None:
            self.dropped += 1
        self._slot = (image, frame)
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while self._slot is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        image, frame = self._slot
        self._slot = None
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(flatten_alpha(image)),
                                         format="bgr24")
        out.pts, out.time_base = self._timestamp(frame)
        self.frames += 1
        self.sent[frame.index] = time.monotonic()
        while len(self.sent) > self.SENT_HISTORY:
            self.sent.popitem(last=False)
        return out

    def _timestamp(self, frame: Frame) -> tuple[int, fractions.Fraction]:
        """The incoming WebRTC frame's own clock when known, so the browser sees
        consistent timing; otherwise a 90 kHz clock from the capture time."""
        pts, time_base = frame.meta.get("pts"), frame.meta.get("time_base")
        if pts is not None and time_base is not None:
            return int(pts), fractions.Fraction(time_base.numerator, time_base.denominator)
        if self._clock_start is None:
            self._clock_start = frame.captured
        ticks = int(round((frame.captured - self._clock_start) * VIDEO_TIME_BASE.denominator))
        if self._last_pts is not None and ticks <= self._last_pts:
            ticks = self._last_pts + 1
        self._last_pts = ticks
        return ticks, VIDEO_TIME_BASE

    def stop(self) -> None:
        """End the track and wake a pending ``recv`` (it raises MediaStreamError)."""
        super().stop()
        self._slot = None
        self._ready.set()

    async def close(self) -> None:
        self.stop()
