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
import dataclasses
import fractions
import functools
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Protocol

# OpenCV before PyAV: PyAV's wheel bundles its own libxcb, and when it is loaded first
# OpenCV's Qt windows bind to it and cv2.imshow spins forever (PyAV issue #978).
import cv2  # isort: skip
import av
import numpy as np
import pyvirtualcam
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack
from av.video.reformatter import Colorspace, Interpolation
from pyvirtualcam.camera import BACKENDS

from live.config import OutputSettings, SettingsError
from live.frames import Frame
from live.worker import Worker

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
    would put back on screen. (cv2 arithmetic: ~10x faster than numpy here.)
    """
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = cv2.cvtColor(cv2.extractChannel(image, 3), cv2.COLOR_GRAY2BGR)
        return cv2.multiply(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), alpha, scale=1 / 255)
    return image


def _positive_fps(fps: float, what: str) -> float:
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise SinkError(f"{what} fps must be a positive number, got {fps!r}")
    return float(fps)


def _to_open_size(sink: Any, image: np.ndarray, what: str) -> np.ndarray:
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


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] not in (3, 4) or image.shape[0] < 2 or image.shape[1] < 2:
        desc = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise SinkError(f"a sink needs a uint8 BGR (HxWx3) or BGRA (HxWx4) image, got {desc}")
    return image


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


# --------------------------------------------------------------------------- virtual camera


#: How to get a virtual camera on Linux (the README explains each option).
V4L2LOOPBACK_FIX = ("sudo apt install v4l2loopback-dkms && "
                    "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label='live'")


def _vcam_hint() -> str:
    """How to get a virtual camera device on this operating system."""
    system = platform.system()
    if system == "Linux":
        return f"load v4l2loopback: {V4L2LOOPBACK_FIX}"
    if system == "Windows":
        return ("install OBS Studio and start its Virtual Camera once (backend 'obs'), or "
                "install Unity Capture (backend 'unitycapture')")
    if system == "Darwin":
        return "install OBS Studio and start its Virtual Camera once (backend 'obs')"
    return f"pyvirtualcam has no virtual camera backend for {system}"


class VirtualCameraSink:
    """Frames to a virtual camera that Zoom, Meet, OBS or a browser pick like a webcam.

    Sent as BGR (pyvirtualcam's ``PixelFormat.BGR``): the backend converts to
    its native format in C, so no conversion is made here. A backend that only
    takes RGB gets RGB. Odd sizes lose their last column/row (see
    ``even_crop``); BGRA is composited onto black (a camera has no alpha).
    If the frame size changes later, frames are resized to the size the camera
    opened with: a consumer such as Zoom cannot follow a size change.

    ``pace=True`` calls ``sleep_until_next_frame`` after each send and makes
    ``write`` wait for it, slowing a faster-than-real-time source (a video
    file) to ``fps``. Cameras pace themselves, so by default a frame is dropped
    (``dropped``) when the previous send is still in flight.
    """

    def __init__(self, device: str | None = None, backend: str | None = None,
                 fps: float = 30.0, *, pace: bool = False) -> None:
        self.fps = _positive_fps(fps, "virtual camera")
        if backend is not None and backend not in BACKENDS:  # pyvirtualcam would KeyError
            raise SinkError(f"no virtual camera backend {backend!r} on this system (available: "
                            f"{sorted(BACKENDS) or 'none'}); {_vcam_hint()}")
        self.device = device
        self.backend = backend
        self.pace = pace
        self.frames = 0
        self.dropped = 0
        self.size: tuple[int, int] | None = None
        self.pixel_format: Any = None  # the pyvirtualcam.PixelFormat in use, once open
        self._camera: Any = None
        self._worker = Worker("live-vcam")
        self._resizing = False
        self._closed = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        _check_image(image)
        if self._closed:
            raise SinkError("write to a closed virtual camera sink")
        if self._worker.busy():  # (raises what the last send raised)
            self.dropped += 1
            return
        if self._camera is None:  # opened here, not in _send, so a missing device fails now
            h, w = even_crop(image).shape[:2]
            self._camera = await self._worker.run(self._open, w, h)
        sent = self._worker.submit(self._send, image)
        if self.pace:
            await sent

    def _send(self, image: np.ndarray) -> None:  # worker thread
        image = _to_open_size(self, even_crop(flatten_alpha(image)), "virtual camera")
        if self.pixel_format is pyvirtualcam.PixelFormat.RGB:
            image = image[..., ::-1]
        try:
            self._camera.send(image)
        except Exception as exc:
            raise SinkError(f"sending to virtual camera {self._camera.device} failed: {exc}; "
                            "is another program writing to that device?") from exc
        self.frames += 1
        if self.pace:
            self._camera.sleep_until_next_frame()

    def _open(self, width: int, height: int) -> Any:
        errors = []
        for fmt in (pyvirtualcam.PixelFormat.BGR, pyvirtualcam.PixelFormat.RGB):
            try:
                camera = pyvirtualcam.Camera(width, height, self.fps, fmt=fmt, device=self.device,
                                    backend=self.backend)
            except Exception as exc:  # pyvirtualcam joins every backend's reason into one
                errors.append(str(exc).strip() or type(exc).__name__)
                continue
            self.size, self.pixel_format = (width, height), fmt
            log.info("virtual camera %s (%s backend) %dx%d @ %g fps, %s", camera.device,
                     camera.backend, width, height, self.fps, fmt)
            return camera
        where = f"device {self.device!r}" if self.device else "any device"
        raise SinkError(f"no virtual camera ({where}, backend {self.backend or 'any'}): "
                        f"{errors[0]}; {_vcam_hint()}")

    async def close(self) -> None:
        """Wait for the send in flight, release the device; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        error = await self._worker.settle()
        if self._camera is not None:
            await self._worker.run(self._camera.close)
            self._camera = None
        self._worker.shutdown()
        if error is not None:
            raise error


# --------------------------------------------------------------------------- recorder


@dataclasses.dataclass(frozen=True)
class _Codec:
    name: str
    pix_fmt: str
    options: dict[str, str]
    time_base: fractions.Fraction  # fine enough that frames never share a tick

    @property
    def alpha(self) -> bool:
        return self.pix_fmt.startswith("yuva")


# Speed settings for live recording: the CPU is busy segmenting.
_H264 = _Codec("libx264", "yuv420p", {"preset": "veryfast", "crf": "20"},
               fractions.Fraction(1, 90000))
_VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32", "b": "0"}
_VP9 = _Codec("libvpx-vp9", "yuv420p", _VP9_OPTIONS, fractions.Fraction(1, 1000))
_VP9_ALPHA = _Codec("libvpx-vp9", "yuva420p", _VP9_OPTIONS, fractions.Fraction(1, 1000))
_PRORES_4444 = _Codec("prores_ks", "yuva444p10le", {"profile": "4444"},
                      fractions.Fraction(1, 90000))

# swscale's default RGB → YUV path truncates (all colours ~2 levels dark after a round trip);
# accurate rounding with full-resolution chroma input costs ~0.5 ms more per 720p frame.
_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP

# Container options that keep a recording playable up to its last written frame when the
# process is killed or the disk fills up (no index at the end to lose): MP4/MOV in
# fragments, one per frame; Matroska/WebM in clusters of at most half a second. And
# every packet handed to the OS at once (`flush_packets`), not kept in a buffer.
_FRAGMENTED_MP4 = {"movflags": "frag_every_frame+empty_moov+default_base_moof",
                   "flush_packets": "1"}
_SHORT_CLUSTERS = {"cluster_time_limit": "500", "flush_packets": "1"}
CONTAINER_OPTIONS = {".mp4": _FRAGMENTED_MP4, ".mov": _FRAGMENTED_MP4,
                     ".webm": _SHORT_CLUSTERS, ".mkv": _SHORT_CLUSTERS}
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska"}

# suffix → (codec for opaque video, codec for transparent video or None)
RECORD_FORMATS: dict[str, tuple[_Codec, _Codec | None]] = {
    ".mp4": (_H264, None),
    ".webm": (_VP9, _VP9_ALPHA),
    ".mov": (_H264, _PRORES_4444),
    ".mkv": (_H264, _VP9_ALPHA),
}


class RecorderSink:
    """Every frame, in order, to a video file (PyAV).

    .mp4 → H.264; .webm → VP9 (with an alpha plane when ``transparent``);
    .mov → H.264, or ProRes 4444 with alpha when ``transparent``; .mkv → H.264,
    or VP9 with alpha. Timestamps come from ``frame.pts`` (seconds, made
    relative to the first frame), so a live source that dropped frames still
    plays at its real speed; a pts that does not move forward is placed one
    frame period after the previous one. Colours are converted and tagged as
    BT.709. Encoding runs on the sink's worker thread with at most
    ``MAX_PENDING`` frames queued, so the pipeline is not held up by each
    encode and memory stays bounded. The file is written in fragments
    (``CONTAINER_OPTIONS``), so it plays up to the last frame written even if
    the process is killed or the disk fills up; ``close`` flushes the encoder
    and finishes it. A recording that got no frame leaves no file.
    """

    MAX_PENDING = 4

    def __init__(self, path: str | os.PathLike[str], fps: float, transparent: bool = False):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in RECORD_FORMATS:
            raise SinkError(f"cannot record to {self.path}: expected a file ending in "
                            f"{', '.join(RECORD_FORMATS)}")
        opaque, with_alpha = RECORD_FORMATS[suffix]
        if transparent and with_alpha is None:
            raise SinkError(f"a transparent background cannot be recorded to {suffix} (H.264 "
                            "has no alpha channel): record to .webm (VP9 with alpha) or .mov "
                            "(ProRes 4444), or choose another background")
        self.codec = with_alpha if transparent else opaque
        if self.codec.name not in av.codecs_available:
            raise SinkError(f"this PyAV build has no {self.codec.name} encoder for {suffix}; "
                            "install the PyAV wheel from PyPI (pip install av) or pick "
                            "another file type")
        self.fps = _positive_fps(fps, "recording")
        if not self.path.parent.is_dir():
            raise SinkError(f"cannot record to {self.path}: folder {self.path.parent} "
                            "does not exist")
        self.transparent = transparent
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self._container: Any = None
        self._file: Any = None
        self._stream: Any = None
        self._first_pts: float | None = None
        self._offset = 0.0
        self._last_t = -np.inf
        self._last_ticks = -1
        self._worker = Worker("live-recorder")
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._resizing = False
        self._closed = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        _check_image(image)
        if self._closed:
            raise SinkError(f"write to {self.path} after it was closed")
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # raises an earlier encode's error
        if self._container is None:  # opened here, not in _encode, so a bad path fails now
            h, w = even_crop(image).shape[:2]
            await self._worker.run(self._open, w, h)
        self._pending.append(self._worker.submit(self._encode, image, self._ticks(frame.pts)))
        while len(self._pending) > self.MAX_PENDING:
            await self._pending.popleft()

    def _ticks(self, pts: float) -> int:
        """Seconds → strictly increasing ticks of the codec's time base."""
        period = 1.0 / self.fps
        if not np.isfinite(pts):  # no timestamp: one frame period after the last one
            t = self._last_t + period if self._first_pts is not None else 0.0
            self._first_pts = 0.0 if self._first_pts is None else self._first_pts
        else:
            if self._first_pts is None:
                self._first_pts = pts
            t = pts - self._first_pts + self._offset
            if not t > self._last_t:  # a source that restarted (or repeated) its clock
                step = self._last_t + period - t
                self._offset += step
                t += step
        self._last_t = t
        ticks = int(round(t / self.codec.time_base))
        ticks = max(ticks, self._last_ticks + 1)
        self._last_ticks = ticks
        return ticks

    def _encode(self, image: np.ndarray, ticks: int) -> None:  # worker thread
        if self.codec.alpha:
            if image.shape[2] == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
        else:
            image = flatten_alpha(image)
        image = even_crop(image)
        image = _to_open_size(self, image, "recording")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                        format="bgra" if image.shape[2] == 4 else "bgr24")
        vf = vf.reformat(format=self.codec.pix_fmt, dst_colorspace=Colorspace.ITU709,
                         interpolation=_ACCURATE)
        vf.pts, vf.time_base = ticks, self.codec.time_base
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except av.FFmpegError as exc:
            raise SinkError(f"recording to {self.path} failed: {exc}") from exc
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        # Written through a Python file, not by FFmpeg itself: FFmpeg's own write()
        # holds the GIL, so an output that blocks (an unread pipe) froze the whole
        # process, Ctrl-C included; Python's write releases it while it waits.
        suffix = self.path.suffix.lower()
        try:
            self._file = open(self.path, "wb")
            container = av.open(self._file, "w", format=CONTAINER_FORMATS[suffix],
                                options=CONTAINER_OPTIONS[suffix])
        except (OSError, av.FFmpegError) as exc:
            if self._file is not None:
                self._file.close()
            raise SinkError(f"cannot create {self.path}: {exc}") from exc
        try:
            rate = fractions.Fraction(self.fps).limit_denominator(1001)
            stream = container.add_stream(self.codec.name, rate=rate, options=self.codec.options)
            stream.width, stream.height, stream.pix_fmt = width, height, self.codec.pix_fmt
            stream.time_base = self.codec.time_base
            ctx = stream.codec_context
            ctx.time_base = self.codec.time_base
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
            ctx.color_range = 1  # limited ("TV") range, what players expect
            ctx.open()  # fails here, not on the first frame, if the encoder rejects a setting
        except (av.FFmpegError, ValueError) as exc:
            container.close()
            self._file.close()
            self.path.unlink(missing_ok=True)
            raise SinkError(f"cannot start the {self.codec.name} encoder for {self.path} "
                            f"({width}x{height}): {exc}") from exc
        self._container, self._stream, self.size = container, stream, (width, height)
        log.info("recording %s: %s %s %dx%d @ %g fps", self.path, self.codec.name,
                 self.codec.pix_fmt, width, height, self.fps)

    def _finish(self) -> None:  # worker thread
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            container, self._container = self._container, None
            try:
                container.close()
            finally:
                self._file.close()

    async def close(self) -> None:
        """Encode what is queued, flush the encoder, finalise the file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        # Queued behind every pending encode on the one worker thread, and shielded: if
        # this close is cancelled (a second Ctrl-C) the thread still finishes the file
        # before the interpreter exits.
        finish = self._worker.submit(self._finish)
        results = await asyncio.shield(asyncio.gather(*self._pending, finish,
                                                      return_exceptions=True))
        self._pending.clear()
        self._worker.shutdown()
        errors = [r for r in results if isinstance(r, BaseException)]
        if isinstance(results[-1], BaseException) and not isinstance(results[-1], SinkError):
            raise SinkError(f"finalising {self.path} failed: {results[-1]}") from results[-1]
        if errors:
            raise errors[0]


# --------------------------------------------------------------------------- preview


@functools.lru_cache(maxsize=4)
def _checkerboard(height: int, width: int, square: int = 16) -> np.ndarray:
    ys, xs = np.indices((height, width), sparse=True)
    board = np.where((ys // square + xs // square) % 2 == 0, 153, 102).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    board.flags.writeable = False  # shared between calls
    return board


def over_checkerboard(image: np.ndarray) -> np.ndarray:
    """BGRA → BGR over a grey checkerboard, the usual picture of "transparent"."""
    alpha = cv2.cvtColor(cv2.extractChannel(image, 3), cv2.COLOR_GRAY2BGR)
    back = cv2.multiply(_checkerboard(*image.shape[:2]), 255 - alpha, scale=1 / 255)
    return cv2.add(flatten_alpha(image), back)


def _imported_before(first: str, second: str) -> bool:
    """Whether module ``first`` was imported before ``second`` (sys.modules keeps import order)."""
    names = list(sys.modules)
    return first in sys.modules and (second not in sys.modules
                                      or names.index(first) < names.index(second))


class PreviewSink:
    """A local window (OpenCV) to look at the output without a video call.

    'q' or Esc (or closing the window) sets ``closed_by_user``; the pipeline
    polls it and stops. All window calls run on the sink's one worker thread:
    HighGUI wants a window used from a single thread. Frames arriving while
    the previous one is being drawn are dropped (``dropped``). On macOS,
    Cocoa only draws windows from the main thread, so there the ~1 ms of
    drawing runs inline on the event loop instead.
    """

    def __init__(self, title: str = "live") -> None:
        if platform.system() == "Linux" and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkError("no display for the preview window (DISPLAY and WAYLAND_DISPLAY "
                            "are unset: headless or over ssh?); output to vcam or a file "
                            "instead, or run it inside a desktop session")
        if platform.system() == "Linux" and _imported_before("av", "cv2"):
            raise SinkError("PyAV was imported before OpenCV in this process, which makes "
                            "cv2.imshow hang (their bundled X libraries clash, PyAV issue "
                            "#978); import cv2 (or live.sinks) before anything imports av")
        self.title = title
        self.closed_by_user = False
        self.frames = 0
        self.dropped = 0
        self._inline = platform.system() == "Darwin"
        self._worker = Worker("live-preview")
        self._opened = False
        self._closed = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        _check_image(image)
        if self._closed or self.closed_by_user:
            return
        if self._worker.busy():
            self.dropped += 1
            return
        if self._inline:
            self._show(image)
        else:
            self._worker.submit(self._show, image)

    def _show(self, image: np.ndarray) -> None:  # worker thread
        if image.shape[2] == 4:
            image = over_checkerboard(image)
        try:
            cv2.imshow(self.title, image)
            self._opened = True
            key = cv2.waitKey(1) & 0xFF
            gone = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error as exc:
            raise SinkError(f"cannot open a preview window: {exc.err or exc}; this OpenCV "
                            "build may have no GUI support (opencv-python-headless): "
                            "pip install opencv-python") from exc
        self.frames += 1
        if key in (ord("q"), ord("Q"), 27) or gone:
            self.closed_by_user = True

    def _destroy(self) -> None:  # worker thread
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._worker.settle()  # a failed draw was reported by write already
        if self._opened:
            if self._inline:
                self._destroy()
            else:
                await self._worker.run(self._destroy)
        self._worker.shutdown()


# --------------------------------------------------------------------------- factory


def create_sink(output: OutputSettings, source_fps: float, transparent: bool, *,
                pace: bool = False) -> Sink:
    """The sink ``output.target`` names: vcam, preview, null, /dev/videoN or a video file.

    ``pace`` (virtual camera only): slow a faster-than-real-time source down
    to the output fps, see VirtualCameraSink.
    """
    target = output.target.strip()
    fps = output.fps or source_fps
    if target == "vcam" or target.startswith("/dev/video"):
        if transparent:
            log.warning("a virtual camera has no alpha: the transparent background shows "
                        "as black")
        device = target if target.startswith("/dev/video") else output.vcam_device
        return VirtualCameraSink(device, output.vcam_backend, fps, pace=pace)
    if target == "preview":
        return PreviewSink("live")
    if target == "null":
        return NullSink()
    if Path(target).suffix.lower() in RECORD_FORMATS:
        try:
            return RecorderSink(target, fps, transparent)
        except SinkError as exc:
            raise SettingsError(f"output.target: {exc}") from None
    raise SettingsError(f"output.target {target!r}: expected vcam, preview, null, a device "
                        f"such as /dev/video10, or a file ending in "
                        f"{', '.join(RECORD_FORMATS)}")
