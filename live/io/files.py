"""Video files: one looping reader (PyAV), the file source built on it, and the recorder.

The background video of ``live.composite`` reads through ``open_video`` too.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fractions
import logging
import os
import time
from pathlib import Path
from typing import Any

# OpenCV before PyAV: PyAV's wheel bundles its own libxcb, and when it is loaded first
# OpenCV's Qt windows bind to it and cv2.imshow spins forever (PyAV issue #978).
import cv2  # isort: skip
import av
import numpy as np
from av.video.reformatter import Colorspace, Interpolation

from live.frames import EndOfStream, Frame
from live.io.base import (SinkError, SourceError, check_image, even_crop, flatten_alpha,
                          positive_fps, to_open_size)
from live.io.worker import Worker

log = logging.getLogger("live.io.files")


def open_video(path: str | Path, max_pixels: int | None = None) -> Any:
    """A PyAV input container holding a video stream, set to decode on threads.

    Raises ValueError saying why not (missing, unreadable, no video stream,
    larger than ``max_pixels``), after closing whatever it opened; the caller
    names the file in its own terms.
    """
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



class VideoReader:
    """A video file's frames in order, as (BGR image, seconds); the one looping reader
    (the file source and the background video both read through it).

    ``loop``: rewind at the end, with time still increasing across the seam.
    Packets are decoded one by one, so a damaged one (a bad sector, a cut
    download) is skipped and counted in ``corrupt`` instead of ending the file:
    the frames after it still come (with artefacts until the next keyframe).
    Only ``MAX_BAD_RUN`` damaged packets in a row end it (``FFmpegError``).
    Blocking: call it on a ``Worker``. Raises ValueError on open (see ``open_video``).
    """

    MAX_BAD_RUN = 250

    def __init__(self, path: str | Path, *, loop: bool = False, max_pixels: int | None = None):
        self.path = Path(path)
        self.container = open_video(path, max_pixels)
        self.stream = self.container.streams.video[0]
        self.fps = float(self.stream.average_rate or 30)
        self.loop = loop
        self.corrupt = 0  # damaged packets skipped
        self._bad_run = 0
        self._packets = self.container.demux(self.stream)
        self._decoded: collections.deque[Any] = collections.deque()
        self._count = 0
        self._offset = 0.0  # seconds added per completed loop so time keeps increasing
        self._last_pts = 0.0

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next frame and its time; None at the end (of a file that does not loop,
        or of one that has no frame left after a rewind)."""
        for _attempt in range(2):
            vf = self._next_frame()
            if vf is None:
                if not self.loop:
                    return None
                self.rewind()
                continue
            pts = float(vf.pts * vf.time_base) if vf.pts is not None else self._count / self.fps
            self._last_pts = pts + self._offset
            self._count += 1
            return vf.to_ndarray(format="bgr24"), self._last_pts
        return None

    def _next_frame(self) -> Any:
        """The next decoded av.VideoFrame, None at the end; skips damaged packets."""
        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            try:
                self._decoded.extend(packet.decode())
                self._bad_run = 0
            except av.error.FFmpegError as exc:
                self.corrupt += 1
                self._bad_run += 1
                log.warning("%s: damaged packet skipped (%s)", self.path, exc)
                if self._bad_run > self.MAX_BAD_RUN:
                    raise
        return self._decoded.popleft()

    def rewind(self) -> None:
        self._offset = self._last_pts + 1.0 / self.fps
        self.container.seek(0)
        self._packets = self.container.demux(self.stream)
        self._decoded.clear()

    def close(self) -> None:
        self.container.close()


class FileSource:
    """A video file decoded with PyAV; optionally looped and paced like a camera.
    Damaged packets are skipped and counted (see ``VideoReader``)."""

    def __init__(self, path: str | Path, loop: bool = False, realtime: bool = False):
        self._worker = Worker("live-src-file")
        self.path = Path(path)
        try:
            self.reader = VideoReader(self.path, loop=loop)
        except ValueError as exc:
            raise SourceError(f"cannot read video {self.path}: {exc}") from None
        self.fps = self.reader.fps
        self.loop, self.live = loop, realtime
        self.index = 0
        self._start: float | None = None

    def _next(self) -> tuple[np.ndarray, float] | None:
        try:
            return self.reader.read()
        except av.error.FFmpegError as exc:
            raise SourceError(f"decoding {self.path} failed: {exc}") from None

    def stats(self) -> dict[str, Any]:
        return {"corrupt_packets": self.reader.corrupt}

    async def read(self) -> Frame:
        got = await self._worker.run(self._next)
        if got is None:
            raise EndOfStream
        image, pts = got
        if self.live:  # wait for the frame's moment, as a camera would deliver it
            now = time.monotonic()
            if self._start is None:
                self._start = now - pts
            await asyncio.sleep(max(0.0, self._start + pts - now))
        self.index += 1
        return Frame(image, self.index - 1, pts)

    async def close(self) -> None:
        await self._worker.run(self.reader.close)
        self._worker.shutdown()


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
        self.fps = positive_fps(fps, "recording")
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
        self._failed = False  # an encode or a write failed: cut the file to whole fragments

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        check_image(image)
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
        image = to_open_size(self, image, "recording")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                        format="bgra" if image.shape[2] == 4 else "bgr24")
        vf = vf.reformat(format=self.codec.pix_fmt, dst_colorspace=Colorspace.ITU709,
                         interpolation=_ACCURATE)
        vf.pts, vf.time_base = ticks, self.codec.time_base
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except av.FFmpegError as exc:
            self._failed = True
            raise SinkError(f"recording to {self.path} failed: {exc}") from exc
        except OSError:  # the disk is full (or gone): the file is cut when closed
            self._failed = True
            raise
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
            self._flush_and_close()
        finally:
            if self._failed and CONTAINER_OPTIONS[self.path.suffix.lower()] is _FRAGMENTED_MP4:
                cut_after_last_fragment(self.path)

    def _flush_and_close(self) -> None:  # worker thread
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


def cut_after_last_fragment(path: Path) -> None:
    """Cut a fragmented MP4/MOV after its last whole fragment (a moof and its mdat).

    A write that fails part-way (a full disk) leaves a box cut short at the end,
    and FFmpeg, so every player built on it, may then refuse to open the file at
    all (a moof cut after 47 of its 104 bytes did). Everything before it is whole:
    cut there, and the file plays up to its last complete frame. Shrinking a file
    needs no free space. Nothing is cut from a file that ends on a whole box."""
    try:
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            pos = whole = 0
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if length == 1 and len(head) == 16:  # a 64-bit size follows the type
                    length = int.from_bytes(head[8:16], "big")
                if length < 8 or pos + length > size:
                    break  # cut short (or "to the end of the file": not written by us)
                pos += length
                if kind != b"moof":  # a moof without its mdat holds no frame
                    whole = pos
            if whole < size:
                f.truncate(whole)
                log.warning("%s: cut after its last whole fragment (%d of %d bytes)",
                            path, whole, size)
    except OSError as exc:
        log.warning("%s: could not cut it to its last whole fragment: %s", path, exc)
