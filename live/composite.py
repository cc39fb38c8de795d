"""The compositor: frame + full-resolution alpha → the picture the viewer sees.

Background modes: ``blur`` (the frame's own background, blurred without the
person bleeding into it), ``color``, ``image`` (cover/contain fit), ``video``
(a looping file, decoded ahead on a worker thread) and ``transparent`` (BGRA).

Every background file is opened and checked *before* it is swapped in, so a
bad upload raises ``BackgroundError`` and the stream keeps its previous
background. Per-frame work is a handful of OpenCV calls on uint8/float32
arrays: anything that only depends on the frame size (a resized image, a
solid colour plane) is built once and cached.

A background is bounded by what it costs, not only by its pixel count: a
legal 100x500,000 PNG once asked OpenCV for 6 GB per frame (the cover fit
scaled the whole strip before cropping it). So the aspect ratio is bounded
(``check_image_size``, also the upload's rule), a decoded image is kept at
most at ``MAX_KEPT_PIXELS``, and a fit crops before it resizes: its working
size is the frame's, whatever the picture.
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Collection, Iterator, Protocol

import cv2
import numpy as np

from live.config import BackgroundSettings
from live.frames import I420, I420Pyramid, Pyramid, halve
from live.io.worker import Worker
from live.matte import Box, blob_boxes

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_IMAGE_PIXELS = 50_000_000  # the control panel uploads images: refuse decompression bombs
MAX_VIDEO_PIXELS = 3840 * 2160
MAX_ASPECT = 16  # a 16:1 panorama still fits; a 1:5000 strip is no picture of a room
MAX_KEPT_PIXELS = 3840 * 2160  # a larger image is shrunk once, on load: no 4K frame needs more
VIDEO_READ_AHEAD = 4
#: What a client may upload (Pillow's format name → the suffix it is stored under).
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}


class BackgroundError(ValueError):
    """A background image or video cannot be used; the message names the file and why."""


def hex_to_bgr(color: str) -> tuple[int, int, int]:
    """``#RRGGBB`` → (b, g, r); the settings schema has already checked the format."""
    value = color.lstrip("#")
    r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    return b, g, r


def check_image_size(width: int, height: int) -> str | None:
    """Why an image of width x height may not be a background, or None when it may.

    One rule for uploads (checked on the header, before decoding) and for files.
    """
    if width < 1 or height < 1:
        return "the image is empty"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width}x{height} is {width * height / 1e6:.0f} megapixels, the limit is "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (f"{width}x{height} is too elongated (at most {MAX_ASPECT}:1 either way); "
                "crop it first")
    return None


@contextmanager
def decoded_image(fp: str | Path | IO[bytes],
                  formats: Collection[str] | None = None) -> Iterator[Image]:
    """The Pillow image of ``fp``, its pixels decoded, or BackgroundError saying why not.

    One decoding rule for uploads and files: the header is read first (no pixel
    data), so a 50,000 x 50,000 PNG of a few KB is refused by ``check_image_size``
    before anything allocates its pixels. ``formats`` (Pillow names) limits what
    is accepted; None takes whatever Pillow reads (the operator's own files).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(fp)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise BackgroundError("not a readable image; use a PNG, JPEG, WebP or BMP file") \
            from None
    with image:
        if formats is not None and image.format not in formats:
            raise BackgroundError(f"{image.format} images are not supported; use a PNG, JPEG, "
                                  "WebP or BMP")
        refused = check_image_size(*image.size)
        if refused:
            raise BackgroundError(f"image refused: {refused}")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise BackgroundError("the image is damaged or truncated and could not be "
                                  "decoded") from None
        yield image


def fit_image(image: np.ndarray, width: int, height: int, fit: str,
              fill: str = "black") -> np.ndarray:
    """``image`` resized to width x height: ``cover`` crops the overflow, ``contain``
    letterboxes so nothing is cut off. Nothing larger than the output is
    ever allocated (cover crops the source before resizing it).

    The letterbox bars are black (``fill="black"``) or, with ``fill="blur"``, a
    blurred and dimmed copy of the image itself stretched over the frame (the
    usual look for a photo of another shape; cheap: it is computed on a copy
    shrunk 8x). Never the colour setting: a green bar around a photo is no
    background anyone wants.
    """
    ih, iw = image.shape[:2]
    scale = (max if fit == "cover" else min)(width / iw, height / ih)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if fit == "cover":  # the part of the source that shows, then one resize to the output
        cw, ch = min(iw, max(1, round(width / scale))), min(ih, max(1, round(height / scale)))
        x0, y0 = (iw - cw) // 2, (ih - ch) // 2
        return cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=interp)
    nw, nh = min(width, max(1, round(iw * scale))), min(height, max(1, round(ih * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    if fill == "blur" and (nw, nh) != (width, height):
        sw, sh = max(1, width // 8), max(1, height // 8)
        small = fit_image(image, sw, sh, "cover")
        r = max(1, round(max(sw, sh) / 16))
        small = cv2.stackBlur(small, (2 * r + 1, 2 * r + 1))
        small = cv2.convertScaleAbs(small, alpha=0.6)  # dimmed: the picture itself stands out
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resized
    return out


def blend(frame: np.ndarray, background: np.ndarray, alpha: np.ndarray,
          dst: np.ndarray | None = None) -> np.ndarray:
    """frame * alpha + background * (1 - alpha), per pixel, in one OpenCV pass.

    ``dst`` may be a view of the output image, even one that overlaps
    ``background``: each pixel is read before it is written. (An 8-bit
    fixed-point version with cv2.multiply/add measured ~2x slower here.)
    """
    if dst is None:
        return cv2.blendLinear(frame, background, alpha, 1.0 - alpha)
    return cv2.blendLinear(frame, background, alpha, 1.0 - alpha, dst=dst)


def blend_i420(frame: I420, background: I420, alpha: AlphaLevels, boxes: list[Box],
               out: I420) -> I420:
    """``blend`` plane by plane, in the boxes: the luma with the alpha, each chroma
    plane with the alpha halved (a 2x2 mean: the share of a chroma sample's four
    pixels that is the person). ``out`` may be ``background`` itself.

    A chroma sample spans 2x2 pixels, so the boxes are widened to even bounds,
    and boxes that then overlap are merged: a pixel blended twice would be
    blended with its own blend. Outside the original boxes the alpha is 0, so
    the wider boxes give the background there, exactly.
    """
    a0, a1 = alpha.level(0), alpha.level(1)
    for x0, y0, x1, y1 in _even_disjoint(boxes):
        blend(frame.y[y0:y1, x0:x1], background.y[y0:y1, x0:x1], a0[y0:y1, x0:x1],
              dst=out.y[y0:y1, x0:x1])
        cx0, cy0, cx1, cy1 = x0 // 2, y0 // 2, x1 // 2, y1 // 2
        for src, bg, dst in ((frame.u, background.u, out.u), (frame.v, background.v, out.v)):
            blend(src[cy0:cy1, cx0:cx1], bg[cy0:cy1, cx0:cx1], a1[cy0:cy1, cx0:cx1],
                  dst=dst[cy0:cy1, cx0:cx1])
    return out


def _even_disjoint(boxes: list[Box]) -> list[Box]:
    """``boxes`` widened to even bounds, those that then overlap merged into one."""
    pending = [(x0 & ~1, y0 & ~1, x1 + (x1 & 1), y1 + (y1 & 1)) for x0, y0, x1, y1 in boxes]
    done: list[Box] = []
    while pending:
        b = pending.pop()
        for i, m in enumerate(done):
            if b[0] < m[2] and m[0] < b[2] and b[1] < m[3] and m[1] < b[3]:
                del done[i]
                pending.append((min(b[0], m[0]), min(b[1], m[1]),
                                max(b[2], m[2]), max(b[3], m[3])))
                break
        else:
            done.append(b)
    return done


class AlphaLevels:
    """The alpha shrunk by 2**k, each level computed once and only when asked.

    Each level halves the one before: with even sizes (720p and 1080p up to
    k = 3) one INTER_AREA call, an exact 2x2 mean that OpenCV vectorises (three
    of them cost half of one 8x INTER_AREA call); with an odd size, ``halve``.
    Both keep every non-zero pixel visible (a mean of non-negative values).

    With ``boxes`` (disjoint boxes outside which the alpha is 0, as the matte
    hands them on) and a frame size divisible by 2**k, a level is computed in
    the boxes only (each widened to whole 2**k blocks) and is 0 elsewhere:
    the same values, without a pass over the whole full-resolution alpha.
    """

    def __init__(self, alpha: np.ndarray, boxes: list[Box] | None = None):
        self._levels: dict[int, np.ndarray] = {0: alpha}
        self._boxes = boxes

    def level(self, k: int) -> np.ndarray:
        if k not in self._levels and self._boxes is not None:
            full = self._levels[0]
            h, w = full.shape
            n = 1 << k
            if h % n == 0 and w % n == 0:
                out = np.zeros((h >> k, w >> k), np.float32)
                for x0, y0, x1, y1 in self._boxes:
                    bx0, by0, bx1, by1 = x0 >> k, y0 >> k, -(-x1 >> k), -(-y1 >> k)
                    if bx1 > bx0 and by1 > by0:  # a block two boxes share gets the same value
                        crop = full[by0 << k:by1 << k, bx0 << k:bx1 << k]
                        for _ in range(k):
                            crop = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2),
                                              interpolation=cv2.INTER_AREA)
                        out[by0:by1, bx0:bx1] = crop
                self._levels[k] = out
        if k not in self._levels:
            finer = self.level(k - 1)
            h, w = finer.shape
            if h % 2 == 0 and w % 2 == 0:
                self._levels[k] = cv2.resize(finer, (w // 2, h // 2),
                                             interpolation=cv2.INTER_AREA)
            else:
                self._levels[k] = halve(finer)
        return self._levels[k]


BOX_LEVEL = 3  # the boxes around the person are found on the alpha shrunk 8x


def person_boxes(levels: AlphaLevels) -> list[Box]:
    """Disjoint boxes around every pixel with alpha > 0 (empty when there is none).

    Outside them the output is the background as is, so the per-pixel blend
    only runs inside (a fraction of the frame in webcam framing).
    """
    full, small = levels.level(0), levels.level(BOX_LEVEL)
    h, w = full.shape
    sy, sx = h / small.shape[0], w / small.shape[1]
    return [(int(x0 * sx), int(y0 * sy), min(w, int(np.ceil(x1 * sx))),
             min(h, int(np.ceil(y1 * sy))))
            for x0, y0, x1, y1 in blob_boxes(small > 0, margin=1, coarse=2)]


class Background(Protocol):
    fresh: bool  # render returns a new array each call (the compositor may write into it)
    color: tuple[int, int, int] | None  # (b, g, r) when it is one solid colour (a fill)

    def render(self, frame: Pyramid, alpha: AlphaLevels) -> np.ndarray | I420:
        """The background for this frame, at its size and in its layout (BGR or I420)."""

    def close(self) -> None:
        """Release files and threads."""


class BlurBackground:
    """The frame's own background, blurred, with the person cut out before blurring.

    A plain blur smears the person into a halo around them. Here the blur is
    normalised by the background weight: blur(frame * (1 - a)) / blur(1 - a),
    so each background pixel averages background only. It runs on a copy
    shrunk by a power of two (the blur hides the lost detail; the alpha is
    shrunk the same way, shared with the search for the person boxes) and is
    upsampled once.
    """

    fresh = True
    color = None

    def __init__(self, strength: int):
        self.strength = strength

    def render(self, frame: Pyramid, alpha: AlphaLevels) -> np.ndarray | I420:
        w, h = frame.size
        radius = self.strength * h / 720.0  # the setting is in 720p pixels
        k = min(4, max(1, round(math.log2(max(radius, 1.0) / 3.0))))  # keep ~3 px of radius
        small = frame.halved(k)  # halvings shared with the model input
        # The background weight 1 - a, plus a small eps everywhere: deep inside the person
        # no background is in reach (blur(1 - a) ~ 0) and the eps falls back to a plain
        # blur there (the person covers it anyway). As an 8-bit alpha channel.
        eps = 0.02
        weight = cv2.convertScaleAbs(alpha.level(k), alpha=-255.0, beta=255.0 * (1.0 + eps))
        r = max(1, round(radius * small.shape[1] / w))
        # blur(frame * weight) / blur(weight) is a blur of the frame premultiplied by the
        # weight, then un-premultiplied: OpenCV does both in 8 bits, a third of the cost of
        # float32 with merges and divides. The precision lost where the blurred weight is
        # small lies deep inside the person, where the background is covered.
        premultiplied = cv2.cvtColor(cv2.merge((small, weight)), cv2.COLOR_RGBA2mRGBA)
        blurred = cv2.stackBlur(premultiplied, (2 * r + 1, 2 * r + 1))
        bg_small = cv2.cvtColor(cv2.cvtColor(blurred, cv2.COLOR_mRGBA2RGBA), cv2.COLOR_BGRA2BGR)
        return frame.enlarged(bg_small)

    def close(self) -> None:
        pass


class StillBackground:
    """A fixed picture (a solid colour or an image), fitted once per frame size."""

    fresh = False

    def __init__(self, image: np.ndarray, fit: str, source: tuple | None = None,
                 color: tuple[int, int, int] | None = None):
        self.image, self.fit = image, fit
        self.color = color  # (b, g, r) when the picture is one solid colour
        self.source = source  # (path, mtime, size) of the file it was decoded from
        self._cache: np.ndarray | None = None
        self._layout = InLayout()

    def render(self, frame: Pyramid, alpha: AlphaLevels) -> np.ndarray | I420:
        return self._layout(frame, self.fitted(*frame.size))

    def fitted(self, width: int, height: int) -> np.ndarray:
        """The picture at width x height, fitted once per size change."""
        if self._cache is None or self._cache.shape[:2] != (height, width):
            self._cache = fit_image(self.image, width, height, self.fit, "blur")
        return self._cache

    def close(self) -> None:
        pass


class InLayout:
    """A background picture in the frame's layout, converted once for as long as
    the same picture is shown (a still image: until the frame size changes)."""

    def __init__(self) -> None:
        self._last: tuple[np.ndarray, I420] | None = None  # (picture, its conversion)

    def __call__(self, frame: Pyramid, bgr: np.ndarray) -> np.ndarray | I420:
        if not isinstance(frame, I420Pyramid):
            return bgr
        if self._last is None or self._last[0] is not bgr:
            self._last = bgr, I420.from_bgr(bgr)
        return self._last[1]


def file_stamp(path: str) -> tuple:
    """(path, mtime, size): a re-uploaded file under the same name counts as a new file."""
    try:
        st = Path(path).stat()
        return path, st.st_mtime_ns, st.st_size
    except OSError:
        return path, None, None


def solid(color: str) -> StillBackground:
    bgr = hex_to_bgr(color)
    return StillBackground(np.full((1, 1, 3), bgr, np.uint8), "cover", color=bgr)


def load_image(path: str) -> np.ndarray:
    """Decode an image file to BGR, refusing what is missing, corrupt or too large."""
    from PIL import ImageOps

    p = Path(path)
    if not p.is_file():
        raise BackgroundError(f"background image {path}: no such file")
    try:
        with decoded_image(p) as img:
            img = ImageOps.exif_transpose(img)  # phone photos stand the right way up
            rgb = np.asarray(img.convert("RGB"))
    except BackgroundError as exc:
        raise BackgroundError(f"background image {path}: {exc}") from None
    if rgb.size == 0:
        raise BackgroundError(f"background image {path}: the image is empty")
    h, w = rgb.shape[:2]
    if w * h > MAX_KEPT_PIXELS:  # kept (and refitted at each size change) at most at 4K
        s = math.sqrt(MAX_KEPT_PIXELS / (w * h))
        rgb = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))),
                         interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


class VideoBackground:
    """A looping video file, decoded on a worker thread a few frames ahead.

    ``render`` takes the next decoded frame when one is ready and otherwise
    shows the previous one again, so a slow decoder never stalls the stream.
    The file is opened and its first frame decoded in the constructor: a bad
    file fails there, before anything is swapped.
    """

    fresh = False
    color = None

    def __init__(self, path: str, fit: str):
        import av

        from live.io.files import VideoReader  # PyAV loads only for a video background

        self.path, self.fit = path, fit
        self.stamp = file_stamp(path)
        try:
            self._reader = VideoReader(path, loop=True, max_pixels=MAX_VIDEO_PIXELS)
        except ValueError as exc:
            raise BackgroundError(f"background video {path}: {exc}") from None
        refused = check_image_size(self._reader.stream.width, self._reader.stream.height)
        if refused:
            self._reader.close()
            raise BackgroundError(f"background video {path}: {refused}")
        try:
            first = self._reader.read()
        except (av.FFmpegError, ValueError) as exc:
            self._reader.close()
            raise BackgroundError(f"background video {path}: cannot decode it ({exc})") \
                from None
        if first is None:
            self._reader.close()
            raise BackgroundError(f"background video {path}: no decodable frame")
        self._size: tuple[int, int] | None = None  # (w, h) the frames are wanted at
        self._last = first[0]
        self._failures = 0
        self._worker = Worker("live-bg-video")
        shown_first: Future[np.ndarray | None] = Future()  # the check decoded it already
        shown_first.set_result(first[0])
        self._ahead = collections.deque([shown_first])
        self._ahead.extend(self._worker.call(self._decode) for _ in range(VIDEO_READ_AHEAD - 1))
        self._layout = InLayout()

    def _decode(self) -> np.ndarray | None:  # worker thread
        """The next frame fitted to the wanted size; a broken frame rewinds the file, and
        after a few in a row (or a failed rewind) None: the last good frame stays."""
        import av

        while self._failures <= 3:
            try:
                got = self._reader.read()
            except (av.FFmpegError, ValueError):
                self._failures += 1
                try:
                    self._reader.rewind()
                except av.FFmpegError:
                    return None
                continue
            if got is None:
                return None
            self._failures = 0
            size = self._size
            return got[0] if size is None else fit_image(got[0], size[0], size[1], self.fit)
        return None

    def render(self, frame: Pyramid, alpha: AlphaLevels) -> np.ndarray | I420:
        w, h = frame.size
        self._size = (w, h)
        if self._ahead and self._ahead[0].done():  # else the decoder is behind: show it again
            image = self._ahead.popleft().result()
            if image is not None:
                self._last = image
                self._ahead.append(self._worker.call(self._decode))
        if self._last.shape[:2] != (h, w):  # frames decoded before the size was known
            self._last = fit_image(self._last, w, h, self.fit)
        return self._layout(frame, self._last)

    def close(self) -> None:
        self._worker.shutdown(wait=True)  # the frame being decoded, then no more
        self._reader.close()


class Compositor:
    """Replaces the background of each frame; the mode can change while running."""

    def __init__(self, settings: BackgroundSettings | None = None):
        self.settings = settings or BackgroundSettings()
        self._size: tuple[int, int] | None = None  # (w, h) of the last frame composited
        self._background = self._build(self.settings, None)

    def update(self, settings: BackgroundSettings) -> None:
        """Switch to ``settings``; raises BackgroundError and keeps the old one on bad input.

        A new image or video is decoded here (tens of ms for a large file), and
        a picture is fitted here to the current frame size, so call it outside
        any per-frame lock: the swap is one attribute assignment and ``apply``
        reads it once, so ``update`` may run on another thread while ``apply``
        is running.
        """
        new = self._build(settings, self._background)
        if isinstance(new, StillBackground) and self._size is not None:
            try:
                new.fitted(*self._size)
            except (cv2.error, MemoryError) as exc:  # bounded above; refused, never per frame
                raise BackgroundError(f"background image {settings.image}: cannot be fitted to "
                                      f"{self._size[0]}x{self._size[1]} ({type(exc).__name__})"
                                      ) from None
        old, self._background, self.settings = self._background, new, settings
        if old is not new and old is not None:
            old.close()

    def _build(self, s: BackgroundSettings, current: Background | None) -> Background | None:
        if s.mode == "transparent":
            return None
        if s.mode == "blur":
            return BlurBackground(s.blur)
        if s.mode == "color":
            return solid(s.color)
        if s.mode == "image":
            if not s.image:
                raise BackgroundError("background mode 'image' needs an image file")
            stamp = file_stamp(s.image)
            if isinstance(current, StillBackground) and current.source == stamp:
                return StillBackground(current.image, s.fit, stamp)  # refit, no re-decode
            return StillBackground(load_image(s.image), s.fit, stamp)
        if s.mode == "video":
            if not s.video:
                raise BackgroundError("background mode 'video' needs a video file")
            if isinstance(current, VideoBackground) and current.stamp == file_stamp(s.video) \
                    and current.fit == s.fit:
                return current  # same file: keep playing where it is
            return VideoBackground(s.video, s.fit)
        raise BackgroundError(f"unknown background mode {s.mode!r}")

    def apply(self, frame: np.ndarray | I420 | Pyramid, alpha_fullres: np.ndarray,
              boxes: list[Box] | None = None) -> np.ndarray | I420:
        """The frame with the background replaced, in the frame's layout: BGR uint8
        HxWx3, or I420 (BGRA HxWx4 in transparent mode, whatever the layout).

        ``frame``: a BGR image, an I420 picture, or the frame's ``Pyramid`` (the
        blur starts from one of its shared smaller copies).
        ``boxes``: disjoint boxes outside which the alpha is 0 (``Matte.apply`` gives them);
        found here when not given.
        """
        frame = Pyramid.of(frame)
        if alpha_fullres.shape != frame.size[::-1]:
            raise ValueError(f"alpha {alpha_fullres.shape} does not match the frame "
                             f"{frame.size[::-1]}")
        alpha = np.asarray(alpha_fullres, dtype=np.float32)
        self._size = frame.size
        background = self._background  # one read: an update swaps it atomically
        if background is None:
            out = cv2.cvtColor(frame.image, cv2.COLOR_BGR2BGRA)
            out[:, :, 3] = cv2.convertScaleAbs(alpha, alpha=255.0)
            return out
        levels = AlphaLevels(alpha, boxes)
        bg = background.render(frame, levels)
        if boxes is None:
            boxes = person_boxes(levels)
        if isinstance(bg, I420):
            return blend_i420(frame.picture, bg, levels, boxes,  # type: ignore[attr-defined]
                              out=bg if background.fresh else bg.copy())
        frame_bgr = frame.image
        if boxes == [(0, 0, alpha.shape[1], alpha.shape[0])]:
            return blend(frame_bgr, bg, alpha)
        if background.fresh:
            out = bg
        elif background.color is not None:  # a fill writes only: half a copy
            out = np.empty_like(bg)
            cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), background.color,
                          thickness=-1)
        else:
            out = bg.copy()
        for x0, y0, x1, y1 in boxes:  # disjoint: each reads background pixels only
            blend(frame_bgr[y0:y1, x0:x1], bg[y0:y1, x0:x1], alpha[y0:y1, x0:x1],
                  dst=out[y0:y1, x0:x1])
        return out

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
