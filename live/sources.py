"""Where frames come from: a webcam, a video file, a synthetic pattern, a WebRTC track.

Every source has one coroutine, ``read() -> Frame`` (``EndOfStream`` when it
has no more), ``close()``, and a ``live`` flag: a live source produces frames
on its own clock, so the pipeline drops stale ones; a file that is not paced
is processed frame by frame with nothing dropped.

Blocking reads (OpenCV, PyAV) run in a thread of their own so the event loop
never waits on a device.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from live.config import SettingsError, SourceSettings
from live.frames import EndOfStream, Frame
from live.worker import Worker

log = logging.getLogger("live.sources")


class Source(Protocol):
    live: bool
    fps: float

    async def read(self) -> Frame: ...

    async def close(self) -> None: ...


class SourceError(RuntimeError):
    """A source cannot be opened at all; the message says what to check."""


def open_video(path: str | Path, max_pixels: int | None = None) -> Any:
    """A PyAV input container holding a video stream, set to decode on threads.

    Raises ValueError saying why not (missing, unreadable, no video stream,
    larger than ``max_pixels``), after closing whatever it opened; the caller
    names the file in its own terms.
    """
    import av

    if not Path(path).is_file():
        raise ValueError("no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ValueError(f"cannot open it ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ValueError("the file has no video stream")
    stream = container.streams.video[0]
    if max_pixels is not None and stream.width * stream.height > max_pixels:
        container.close()
        raise ValueError(f"{stream.width}x{stream.height} is too large")
    stream.thread_type = "AUTO"
    return container


# ---------------------------------------------------------------- webcam

class WebcamSource:
    """An OpenCV camera that survives being unplugged: it reports and re-opens with backoff."""

    live = True
    BACKOFF = (0.5, 1.0, 2.0, 4.0, 5.0)

    def __init__(self, device: int | str, width: int, height: int, fps: float):
        self._worker = Worker("live-src-webcam")  # device calls off the loop, in order
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.cap: cv2.VideoCapture | None = None
        self.index = 0
        self.failures = 0
        self.status = "not opened"
        self._closed = False

    def _open(self) -> cv2.VideoCapture:
        # silence OpenCV: a camera that fails to open is reported below, once, clearly
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open webcam {self.device!r}: is it connected, and not "
                              "used by another program? `live doctor` lists cameras; without "
                              "one, `live serve` (make run) uses the browser's camera, and "
                              "--source synthetic or a video file work too")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a backlog
        self.fps = cap.get(cv2.CAP_PROP_FPS) or self.fps
        return cap

    def _grab(self) -> np.ndarray | None:
        if self.cap is None:
            self.cap = self._open()
        ok, image = self.cap.read()
        if not ok or image is None:
            self.cap.release()
            self.cap = None
            return None
        return image

    async def read(self) -> Frame:
        while not self._closed:
            try:
                image = await self._worker.run(self._grab)
            except SourceError as exc:
                if self.index == 0:  # never worked: no camera here, say so at once
                    raise
                image, self.status = None, str(exc)
            if image is not None:
                self.failures, self.status = 0, "ok"
                self.index += 1
                return Frame(image, self.index - 1, time.monotonic())
            if self.index == 0:
                raise SourceError(f"webcam {self.device!r} opened but gives no frames")
            delay = self.BACKOFF[min(self.failures, len(self.BACKOFF) - 1)]
            self.failures += 1
            if self.status == "ok" or self.failures == 1:
                self.status = f"webcam {self.device!r} lost; re-opening"
            log.warning("%s (retry in %.1fs)", self.status, delay)
            await asyncio.sleep(delay)
        raise EndOfStream

    def _release(self) -> None:  # worker thread: after any grab in flight, even a re-open
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    async def close(self) -> None:
        self._closed = True
        await self._worker.run(self._release)
        self._worker.shutdown()


# ---------------------------------------------------------------- video file

class FileSource:
    """A video file decoded with PyAV; optionally looped and paced like a camera.

    Packets are decoded one by one, so a damaged one (a bad sector, a cut
    download) is skipped and counted in ``corrupt`` instead of ending the file:
    the frames after it still come (with artefacts until the next keyframe).
    Only ``MAX_BAD_RUN`` damaged packets in a row end it.
    """

    MAX_BAD_RUN = 250

    def __init__(self, path: str | Path, loop: bool = False, realtime: bool = False):
        self._worker = Worker("live-src-file")
        self.path = Path(path)
        try:
            self.container = open_video(self.path)
        except ValueError as exc:
            raise SourceError(f"cannot read video {self.path}: {exc}") from None
        self.stream = self.container.streams.video[0]
        self.fps = float(self.stream.average_rate or 30)
        self.loop, self.live = loop, realtime
        self._packets = self.container.demux(self.stream)
        self._decoded: collections.deque[Any] = collections.deque()
        self.corrupt = 0  # damaged packets skipped
        self._bad_run = 0
        self.index = 0
        self._offset = 0.0  # pts added per completed loop so time keeps increasing
        self._last_pts = 0.0
        self._start: float | None = None

    def _next_frame(self) -> Any:
        """The next decoded av.VideoFrame, None at the end; skips damaged packets."""
        import av

        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except av.error.FFmpegError as exc:  # the container itself is broken here
                raise SourceError(f"reading {self.path} failed: {exc}") from None
            try:
                self._decoded.extend(packet.decode())
                self._bad_run = 0
            except av.error.FFmpegError as exc:
                self.corrupt += 1
                self._bad_run += 1
                log.warning("%s: damaged packet skipped (%s)", self.path, exc)
                if self._bad_run > self.MAX_BAD_RUN:
                    raise SourceError(f"decoding {self.path} failed: {self._bad_run} damaged "
                                      f"packets in a row ({exc})") from None
        return self._decoded.popleft()

    def _next(self) -> tuple[np.ndarray, float] | None:
        for _attempt in range(2):
            vf = self._next_frame()
            if vf is not None:
                pts = float(vf.pts * vf.time_base) if vf.pts is not None else self.index / self.fps
                return vf.to_ndarray(format="bgr24"), pts
            if not self.loop:
                return None
            self._offset = self._last_pts + 1.0 / self.fps
            self.container.seek(0)
            self._packets = self.container.demux(self.stream)
        return None

    def stats(self) -> dict[str, Any]:
        return {"corrupt_packets": self.corrupt}

    async def read(self) -> Frame:
        got = await self._worker.run(self._next)
        if got is None:
            raise EndOfStream
        image, pts = got
        pts += self._offset
        self._last_pts = pts
        if self.live:  # wait for the frame's moment, as a camera would deliver it
            now = time.monotonic()
            if self._start is None:
                self._start = now - pts
            await asyncio.sleep(max(0.0, self._start + pts - now))
        self.index += 1
        return Frame(image, self.index - 1, pts)

    async def close(self) -> None:
        await self._worker.run(self.container.close)
        self._worker.shutdown()


# ---------------------------------------------------------------- synthetic

class SyntheticSource:
    """A moving figure on a textured background: a camera for machines without one."""

    live = True

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30.0,
                 frames: int | None = None):
        self.width, self.height, self.fps, self.frames = width, height, fps, frames
        self.index = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._background = np.stack([(xx * 255 // max(1, width - 1)),
                                     (yy * 255 // max(1, height - 1)),
                                     ((xx // 40 + yy // 40) % 2) * 80 + 60], -1).astype(np.uint8)
        self._start: float | None = None

    def render(self, index: int) -> np.ndarray:
        image = self._background.copy()
        w, h = self.width, self.height
        cx = int(w / 2 + w / 6 * np.sin(index / 30.0))
        cv2.ellipse(image, (cx, int(h * 0.95)), (w // 6, h // 3), 0, 180, 360, (60, 80, 200), -1)
        cv2.circle(image, (cx, int(h * 0.42)), h // 7, (140, 170, 220), -1)
        return image

    async def read(self) -> Frame:
        if self.frames is not None and self.index >= self.frames:
            raise EndOfStream
        now = time.monotonic()
        if self._start is None:
            self._start = now
        await asyncio.sleep(max(0.0, self._start + self.index / self.fps - now))
        frame = Frame(self.render(self.index), self.index, self.index / self.fps)
        self.index += 1
        return frame

    async def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------- WebRTC track

class TrackSource:
    """An incoming aiortc video track, read frame by frame as BGR."""

    live = True
    fps = 30.0

    def __init__(self, track: Any):
        self.track = track
        self.index = 0

    async def read(self) -> Frame:
        from aiortc.mediastreams import MediaStreamError

        try:
            vf = await self.track.recv()
        except MediaStreamError:
            raise EndOfStream from None
        time_base = vf.time_base or Fraction(1, 90_000)
        pts = float(vf.pts * time_base) if vf.pts is not None else time.monotonic()
        image = vf.to_ndarray(format="bgr24")
        self.index += 1
        return Frame(image, self.index - 1, pts, meta={"pts": vf.pts, "time_base": time_base})

    async def close(self) -> None:
        self.track.stop()


# ---------------------------------------------------------------- factory

def open_source(settings: SourceSettings) -> Source:
    """``webcam``, ``webcam:N``, ``/dev/videoN``, ``synthetic``, or a video file path."""
    spec = settings.spec
    if spec == "synthetic":
        return SyntheticSource(settings.width, settings.height, settings.fps)
    if spec == "webcam" or spec.startswith("webcam:"):
        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise SettingsError(f"source {spec!r}: expected webcam:N with N a camera number")
        return WebcamSource(int(index), settings.width, settings.height, settings.fps)
    if spec.startswith("/dev/video"):
        return WebcamSource(spec, settings.width, settings.height, settings.fps)
    path = Path(spec)
    if path.is_file():
        return FileSource(path, loop=settings.loop, realtime=settings.realtime)
    raise SourceError(f"source {spec!r} is neither a camera (webcam, webcam:N, /dev/videoN), "
                      "'synthetic', nor an existing video file")
