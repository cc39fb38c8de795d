"""The WebRTC ends: the browser's incoming track as a source, the processed video
sent back as a sink. The only module of ``live.io`` that imports aiortc."""

from __future__ import annotations

import asyncio
import collections
import fractions
import time
from typing import Any

import cv2  # noqa: F401  (before av: the other order can make OpenCV spin, PyAV #978)
import av
import numpy as np
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from live.frames import I420, EndOfStream, Frame
from live.io.base import check_image, flatten_alpha


def encoder_frame(image: np.ndarray | I420) -> av.VideoFrame:
    """``image`` (I420, or BGR/BGRA) as the I420 frame both of aiortc's encoders take as is.

    A browser's frames stay I420 through the pipeline, and the composited
    picture is drawn into a PyAV frame of its own (``I420.empty``): it goes out
    as it is. Any other I420 picture (the decoder's own frame, passed through)
    is copied into a new frame. A BGR picture is converted by OpenCV: handing
    BGR to the encoders made each convert with swscale, 3.9 ms per 1280x720
    frame here against 0.7 ms (1.5 vs 0.2 ms at 640x480), same BT.601
    limited-range matrix. I420 needs an even size; an odd one (never from a
    browser) keeps the old path.
    """
    if isinstance(image, I420):
        return (image if image.video_frame is not None else image.copy()).video_frame
    bgr = flatten_alpha(image)
    h, w = bgr.shape[:2]
    if h % 2 or w % 2:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420),
                                      format="yuv420p")


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
    takes_i420 = True  # the pipeline hands I420 pictures over as they are

    def __init__(self) -> None:
        super().__init__()
        self._slot: tuple[np.ndarray | I420, Frame] | None = None
        self._ready = asyncio.Event()
        self._clock_start: float | None = None
        self._last_pts: int | None = None
        self.frames = 0
        self.dropped = 0
        self.sent: collections.OrderedDict[int, float] = collections.OrderedDict()

    async def write(self, image: np.ndarray | I420, frame: Frame) -> None:
        """Offer a frame to the peer; a no-op once the track has ended (peer gone)."""
        if not isinstance(image, I420):
            check_image(image)
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
        out = encoder_frame(image)
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



class TrackSource:
    """An incoming aiortc video track, read frame by frame: as ``I420``, the way the
    decoder gives it (BGR for an odd size or another pixel format).

    Frames that waited too long before we got to read them are dropped here,
    before they cost a conversion, a model pass and an encode. Under overload
    the backlog is not in any queue of ours but in the kernel's UDP buffer
    (the event loop reads RTP slower than it arrives), so "newest frame wins"
    downstream never sees how old a frame is: only its RTP time does. A
    frame's delay is (arrival − RTP time) minus the smallest such difference
    seen (the clock offset; it may creep up ``DRIFT_PER_S`` for clock drift);
    beyond ``MAX_AGE_S`` it is stale. ``overloaded`` says frames were dropped
    so in the last ``OVERLOAD_WINDOW_S``: the page tells its user.
    """

    live = True
    fps = 30.0
    MAX_AGE_S = 0.15
    DRIFT_PER_S = 0.001
    OVERLOAD_WINDOW_S = 3.0

    def __init__(self, track: Any):
        self.track = track
        self.index = 0
        self.stale = 0  # frames dropped for arriving too late
        self.picture = ""  # the last frame's layout: "I420" as decoded, else "BGR"
        self._offset: float | None = None  # least (arrival - RTP time) seen
        self._offset_at = 0.0
        self._stale_at = -float("inf")

    async def read(self) -> Frame:
        while True:
            try:
                vf = await self.track.recv()
            except MediaStreamError:
                raise EndOfStream from None
            time_base = vf.time_base or fractions.Fraction(1, 90_000)
            if vf.pts is None or not self._too_old(float(vf.pts * time_base)):
                break
        pts = float(vf.pts * time_base) if vf.pts is not None else time.monotonic()
        if vf.format.name == "yuv420p" and vf.width % 2 == 0 and vf.height % 2 == 0:
            image: np.ndarray | I420 = I420.of_video_frame(vf)  # read in place
            self.picture = "I420"
        else:
            image = vf.to_ndarray(format="bgr24")
            self.picture = "BGR"
        self.index += 1
        return Frame(image, self.index - 1, pts, meta={"pts": vf.pts, "time_base": time_base})

    def _too_old(self, pts: float) -> bool:
        now = time.monotonic()
        lag = now - pts
        if self._offset is None:
            self._offset = lag
        else:
            self._offset = min(lag, self._offset + (now - self._offset_at) * self.DRIFT_PER_S)
        self._offset_at = now
        if lag - self._offset <= self.MAX_AGE_S:
            return False
        self.stale += 1
        self._stale_at = now
        return True

    def stats(self) -> dict[str, Any]:
        return {"stale_dropped": self.stale, "picture": self.picture,
                "overloaded": time.monotonic() - self._stale_at < self.OVERLOAD_WINDOW_S}

    async def close(self) -> None:
        self.track.stop()

