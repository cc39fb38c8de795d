"""The unit that flows through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np


class EndOfStream(Exception):
    """A source has no more frames (end of file, closed track)."""


class I420:
    """A picture as the video codecs hold it: full-size luma (Y), then the two
    chroma planes (U, V) at half the width and height (FFmpeg's ``yuv420p``).

    A WebRTC frame arrives like this and leaves like this. Kept so from
    decoder to encoder, the picture is never converted to BGR and back (0.6 ms
    a 720p frame), and the per-pixel work (blend, upsampling, halvings) runs
    on 1.5 bytes a pixel instead of 3. The width and height are even.

    The planes are either one uint8 buffer (OpenCV's layout: H*3/2 rows of W)
    or views of a PyAV ``VideoFrame``'s planes (``video_frame``), rows padded
    as FFmpeg pads them. A decoded frame is read in place (``of_video_frame``:
    read-only views, since the decoder may still predict from it), and a new
    picture is drawn straight into a frame the encoder takes as it is
    (``empty``): a 720p frame then crosses neither copy (about 0.1 ms in and
    0.3 ms out, both on the event loop).
    """

    video_frame: Any = None  # the PyAV frame the planes belong to, if they are its own

    def __init__(self, buffer: np.ndarray, width: int, height: int):
        _check_size(width, height)
        if buffer.dtype != np.uint8 or buffer.size != width * height * 3 // 2:
            raise ValueError(f"I420 {width}x{height} needs {width * height * 3 // 2} bytes, "
                             f"got {buffer.dtype} {buffer.shape}")
        self._buffer: np.ndarray | None = np.ascontiguousarray(buffer).reshape(
            height * 3 // 2, width)
        self.width, self.height = width, height
        flat, n = self._buffer.reshape(-1), width * height
        self.y = self._buffer[:height]
        self.u = flat[n:n + n // 4].reshape(height // 2, width // 2)
        self.v = flat[n + n // 4:].reshape(height // 2, width // 2)

    @classmethod
    def of_video_frame(cls, frame: Any, writable: bool = False) -> "I420":
        """A ``yuv420p`` PyAV frame's planes, not copied. Read-only unless
        ``writable``: a decoder's frame may be the reference it predicts the next
        one from, so writing into it would corrupt the stream."""
        _check_size(frame.width, frame.height)
        if frame.format.name != "yuv420p":
            raise ValueError(f"I420 needs a yuv420p frame, got {frame.format.name}")
        out = cls.__new__(cls)
        out.width, out.height, out._buffer = frame.width, frame.height, None
        planes = []
        for plane in frame.planes:
            view = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            view = view[:, :plane.width]
            view.flags.writeable = writable
            planes.append(view)
        out.y, out.u, out.v = planes
        if writable:
            out.video_frame = frame
        return out

    @classmethod
    def empty(cls, width: int, height: int) -> "I420":
        """A new picture to draw on, in a frame an encoder takes without a copy."""
        import av  # here, not at the top: cv2 must be imported first (PyAV #978)

        _check_size(width, height)  # first: PyAV takes a negative size for an OverflowError
        return cls.of_video_frame(av.VideoFrame(width, height, "yuv420p"), writable=True)

    @classmethod
    def from_planes(cls, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> "I420":
        h, w = y.shape
        out = cls(np.empty(w * h * 3 // 2, np.uint8), w, h)
        out.y[:], out.u[:], out.v[:] = y, u, v
        return out

    @classmethod
    def from_bgr(cls, bgr: np.ndarray) -> "I420":
        """BT.601 limited range, the matrix WebRTC's decoders and encoders assume."""
        h, w = bgr.shape[:2]
        return cls(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), w, h)

    @property
    def buffer(self) -> np.ndarray:
        """The three planes in one H*3/2 x W buffer (a copy when they are a frame's)."""
        if self._buffer is not None:
            return self._buffer
        return I420.from_planes(*self.planes).buffer

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), as a 2-D picture's ``shape[:2]``."""
        return self.height, self.width

    @property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.y, self.u, self.v

    def to_bgr(self) -> np.ndarray:
        return cv2.cvtColor(self.buffer, cv2.COLOR_YUV2BGR_I420)

    def copy(self) -> "I420":
        """A writable copy, in a frame of its own (see ``empty``)."""
        out = I420.empty(self.width, self.height)
        for src, dst in zip(self.planes, out.planes):
            dst[:] = src
        return out


def _check_size(width: int, height: int) -> None:
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"I420 needs an even size, got {width}x{height}")


@dataclass
class Frame:
    """One captured frame (BGR uint8 HxWx3, or ``I420`` as a WebRTC peer sends
    it) plus when it was taken.

    ``pts`` is the media timestamp in seconds (file or RTP clock); ``captured``
    is ``time.monotonic()`` when the source produced it, so every later stage
    can tell how stale it is. ``meta`` carries source-specific extras (e.g. the
    incoming WebRTC frame's pts and time_base, so the outgoing one keeps them).
    """

    image: np.ndarray | I420
    index: int
    pts: float
    captured: float = field(default_factory=time.monotonic)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.image.shape[:2]
        return w, h


def check_bgr(image: np.ndarray) -> None:
    """Refuse anything but a uint8 HxWx3 BGR frame, clearly: a grey or float frame
    would otherwise fail deep inside OpenCV or torch."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) \
            else type(image).__name__
        raise ValueError(f"frame must be BGR uint8 HxWx3, got {desc}")


def halve(image: np.ndarray, times: int = 1) -> np.ndarray:
    """``image`` shrunk by 2**times, each step an exact 2x2 mean (fast, alias-free).

    A mean of non-negative values is non-zero wherever any input was, so a
    halved alpha still shows every pixel the person touches.
    """
    for _ in range(times):
        image = cv2.resize(image, (max(1, image.shape[1] // 2), max(1, image.shape[0] // 2)),
                           interpolation=cv2.INTER_LINEAR)
    return image


def boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes, ends exclusive, share any pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def any_blocks(mask: np.ndarray, block: int) -> np.ndarray:
    """``mask`` (bool, or 0/1) on ``block`` x ``block`` blocks: a uint8 map, non-zero
    wherever any cell of the block is set (the last blocks padded with unset cells).

    One INTER_AREA call of 255s: a block's mean is above 0 as soon as one cell is
    set. Labelling blocks instead of cells is what makes finding blobs cheap.
    """
    h, w = mask.shape
    bh, bw = -(-h // block), -(-w // block)
    padded = np.zeros((bh * block, bw * block), np.uint8)
    np.multiply(mask, np.uint8(255), out=padded[:h, :w])
    return cv2.resize(padded, (bw, bh), interpolation=cv2.INTER_AREA)


class Pyramid:
    """One frame and its smaller copies, each made once and only when first asked for.

    Three stages shrink the same frame: the selfie model's input, the matte's
    guide and the background blur. Shrinking a 720p frame is not free (a
    direct 5x INTER_AREA resize costs ~0.8 ms, more than the model's own
    preprocessing should), so the pipeline builds one ``Pyramid`` per frame
    and hands it to every stage: the costly first halvings are done once.

    Stages see the frame only through it, whatever its layout: BGR copies
    (``image``, ``halved``, ``shrunk``), its luminance (``gray``, ``luma``), and
    the way back to full size in the frame's own layout (``enlarged``).
    ``I420Pyramid`` is the same for a frame that came as I420.
    """

    def __init__(self, image: np.ndarray):
        self._start(image.shape[1], image.shape[0])
        self.image = image
        self._halvings = [image]

    def _start(self, width: int, height: int) -> None:
        """What every pyramid has, whatever its layout: its size and the caches."""
        self.width, self.height = width, height
        self._shrunk: dict[tuple[int, int], np.ndarray] = {}
        self._gray: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def of(frame: "np.ndarray | I420 | Pyramid") -> "Pyramid":
        """The pyramid of a BGR image or an I420 picture (a pyramid is its own)."""
        if isinstance(frame, Pyramid):
            return frame
        if isinstance(frame, I420):
            return I420Pyramid(frame)
        check_bgr(frame)
        return Pyramid(frame)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def halved(self, times: int) -> np.ndarray:
        """The image ``halve``d ``times`` times."""
        while len(self._halvings) <= times:
            self._halvings.append(halve(self._halvings[-1]))
        return self._halvings[times]

    def shrunk(self, width: int, height: int) -> np.ndarray:
        """The image at width x height without aliasing: halvings while the result is
        at least twice the target, then one bilinear step of less than 2x (an
        INTER_AREA step there costs 5x more for a difference no model notices)."""
        key = (width, height)
        if key not in self._shrunk:
            self._shrunk[key] = _bilinear(self.halved(self._level_for(width, height)),
                                          width, height)
        return self._shrunk[key]

    def _level_for(self, width: int, height: int) -> int:
        """The most halvings that leave at least twice width x height."""
        k = 0
        while (self.width >> k) >= 2 * width and (self.height >> k) >= 2 * height:
            k += 1
        return k

    def gray(self, width: int, height: int) -> np.ndarray:
        """The luminance at width x height: float32, OpenCV's BGR2GRAY scale (0-255).
        Made once (the selfie engine and the matte both want it), read-only."""
        key = (width, height)
        if key not in self._gray:
            self._gray[key] = self._luminance(width, height)
            self._gray[key].flags.writeable = False
        return self._gray[key]

    def _luminance(self, width: int, height: int) -> np.ndarray:
        return cv2.cvtColor(self.shrunk(width, height), cv2.COLOR_BGR2GRAY).astype(np.float32)

    @property
    def luma(self) -> tuple[np.ndarray, float, float]:
        """The full-size luminance for the matte, as (picture, black, span): gray =
        (value - black) * 255 / span. Here the BGR image itself, which the matte
        converts only inside the boxes around the person."""
        return self.image, 0.0, 255.0

    def enlarged(self, small: np.ndarray) -> np.ndarray | I420:
        """``small`` (BGR, the frame's aspect) at the frame's size, in its layout."""
        return _bilinear(small, self.width, self.height)


class I420Pyramid(Pyramid):
    """The pyramid of an I420 frame: its planes are halved, never a BGR copy of
    the full frame (made only if a stage asks for ``image``, e.g. SAM 2).

    The luminance is the Y plane, which the codecs store in BT.601's limited
    range (16-235): ``gray`` and ``luma`` say so, so the matte's filter sees
    the same guide as from BGR. ``enlarged`` converts the small picture before
    it is enlarged, plane by plane.
    """

    def __init__(self, picture: I420):  # not Pyramid's: ``image`` is made only when asked for
        self._start(picture.width, picture.height)
        self.picture = picture
        self._planes = [picture.planes]
        self._bgr: dict[int, np.ndarray] = {}

    @property  # type: ignore[override]
    def image(self) -> np.ndarray:
        if 0 not in self._bgr:
            self._bgr[0] = self.picture.to_bgr()
        return self._bgr[0]

    def planes(self, times: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Y, U and V each ``halve``d ``times`` times."""
        while len(self._planes) <= times:
            self._planes.append(tuple(halve(p) for p in self._planes[-1]))  # type: ignore
        return self._planes[times]

    def halved(self, times: int) -> np.ndarray:
        if times not in self._bgr:
            if times == 0:
                return self.image
            y, u, v = self.planes(times)
            h, w = y.shape
            if h % 2 == 0 and w % 2 == 0 and u.shape == (h // 2, w // 2):
                self._bgr[times] = I420.from_planes(y, u, v).to_bgr()
            else:  # an odd level (720p halved 4 times): from the level above
                self._bgr[times] = halve(self.halved(times - 1))
        return self._bgr[times]

    def _luminance(self, width: int, height: int) -> np.ndarray:
        y = _bilinear(self.planes(self._level_for(width, height))[0], width, height)
        return (y.astype(np.float32) - 16.0) * np.float32(255.0 / 219.0)

    @property
    def luma(self) -> tuple[np.ndarray, float, float]:
        return self.picture.y, 16.0, 219.0

    def enlarged(self, small: np.ndarray) -> np.ndarray | I420:
        """An odd-sized ``small`` is padded by a pixel for its chroma planes: a
        stretch of one small pixel in the chroma, on a blurred background."""
        sh, sw = small.shape[:2]
        if sh % 2 or sw % 2:
            small = cv2.copyMakeBorder(small, 0, sh % 2, 0, sw % 2, cv2.BORDER_REPLICATE)
        yuv = I420.from_bgr(small)
        out = I420.empty(self.width, self.height)
        for src, dst in ((yuv.y[:sh, :sw], out.y), (yuv.u, out.u), (yuv.v, out.v)):
            cv2.resize(src, dst.shape[::-1], dst=dst, interpolation=cv2.INTER_LINEAR)
        return out


def _bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` at width x height (itself when it is already that size)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
