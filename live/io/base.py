"""The contracts of the media ends, and what every sink shares.

A source has one coroutine, ``read() -> Frame`` (``EndOfStream`` when it has
no more), ``close()``, and a ``live`` flag: a live source produces frames on
its own clock, so the pipeline drops stale ones; a file that is not paced is
processed frame by frame with nothing dropped.

Every sink has the same two coroutines, called by the pipeline exactly so::

    await sink.write(image, frame)   # image: uint8 BGR HxWx3, or BGRA HxWx4 ("transparent")
    await sink.close()               # idempotent; finalises files

Sinks open lazily on the first ``write`` because only then is the frame size
known. Anything that blocks (a device read or send, an encoder) runs on ONE
``Worker`` thread owned by the source or sink, so the event loop stays free and
its own calls stay in order. ``write`` takes ownership of ``image``: the
pipeline must not write into that array afterwards (the sinks avoid a copy per
frame).

Two drop policies, chosen by what the output is for:

- live outputs (virtual camera, preview, WebRTC track) drop a frame when the
  previous one is still being delivered, and count it in ``dropped``: showing
  an old frame late is worse than skipping it;
- the recorder keeps every frame, in order.

A source or sink that cannot work raises ``SourceError`` / ``SinkError`` saying
what failed and how to fix it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import cv2
import numpy as np

from live.frames import Frame
from live.io.worker import Worker

log = logging.getLogger("live.io")


class Source(Protocol):
    live: bool
    fps: float

    async def read(self) -> Frame: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Source-specific figures for the status line (skipped, stale or damaged frames)."""
        ...


class SourceError(RuntimeError):
    """A source cannot be opened at all; the message says what to check."""


class SinkError(RuntimeError):
    """An output cannot be opened or written; the message says what failed and the fix."""


class Sink(Protocol):
    """An output. It is written BGR (BGRA in transparent mode), unless it declares
    ``takes_i420 = True``: then a picture that came as I420 reaches it as it is
    (the WebRTC track, whose encoder wants I420)."""

    async def write(self, image: np.ndarray, frame: Frame) -> None: ...

    async def close(self) -> None: ...


def takes_i420(sink: Sink) -> bool:
    """Whether ``sink`` takes an I420 picture as it is (see ``Sink``)."""
    return bool(getattr(sink, "takes_i420", False))


# --------------------------------------------------------------------------- helpers


def flatten_alpha(image: np.ndarray) -> np.ndarray:
    """BGRA → BGR composited onto black; BGR passes through untouched.

    Onto black rather than "drop the alpha channel": behind alpha 0 the colour
    channels may still hold the original background, which dropping the alpha
    would put back on screen. (cv2 arithmetic: ~10x faster than numpy here.)
    """
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = cv2.cvtColor(cv2.extractChannel(image, 3), cv2.COLOR_GRAY2BGR)
        return cv2.multiply(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), alpha, scale=1 / 255)
    return image


def positive_fps(fps: float, what: str) -> float:
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise SinkError(f"{what} fps must be a positive number, got {fps!r}")
    return float(fps)


def to_open_size(sink: Any, image: np.ndarray, what: str) -> np.ndarray:
    """``image`` at the size ``sink`` opened with (``sink.size``): a consumer such as Zoom,
    or a file, cannot follow a size change. Said once, in the log (``sink._resizing``)."""
    h, w = image.shape[:2]
    if (w, h) == sink.size:
        return image
    if not sink._resizing:
        log.warning("frame size changed to %dx%d; resizing to the %s's %dx%d", w, h, what,
                    *sink.size)
        sink._resizing = True
    return cv2.resize(image, sink.size, interpolation=cv2.INTER_AREA)


def even_crop(image: np.ndarray) -> np.ndarray:
    """Drop the last column/row of an odd-sized image (a view, no copy).

    YUV 4:2:0 (what v4l2loopback consumers and H.264 use) needs even sizes;
    cropping one pixel is cheaper than padding and invisible.
    """
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]


def check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] not in (3, 4) or image.shape[0] < 2 or image.shape[1] < 2:
        desc = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise SinkError(f"a sink needs a uint8 BGR (HxWx3) or BGRA (HxWx4) image, got {desc}")
    return image


# --------------------------------------------------------------------------- live outputs


class DroppingSink:
    """What the virtual camera and the preview share: one worker thread, and the live
    outputs' drop policy (a frame that arrives while the previous one is still being
    delivered is counted in ``dropped``, not queued)."""

    def __init__(self, thread_name: str) -> None:
        self.frames = 0
        self.dropped = 0
        self._worker = Worker(thread_name)
        self._closed = False

    def _drops(self) -> bool:
        """True (the frame counted as dropped) while the previous one is still in flight.
        Raises what the last delivery raised."""
        if self._worker.busy():
            self.dropped += 1
            return True
        return False


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
