"""The unit that flows through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np


class EndOfStream(Exception):
    """A source has no more frames (end of file, closed track)."""


@dataclass
class Frame:
    """One captured frame: BGR uint8 HxWx3 plus when it was taken.

    ``pts`` is the media timestamp in seconds (file or RTP clock); ``captured``
    is ``time.monotonic()`` when the source produced it, so every later stage
    can tell how stale it is. ``meta`` carries source-specific extras (e.g. the
    incoming WebRTC frame's pts and time_base, so the outgoing one keeps them).
    """

    image: np.ndarray
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
    """

    def __init__(self, image: np.ndarray):
        self.image = image
        self._halvings = [image]
        self._shrunk: dict[tuple[int, int], np.ndarray] = {}

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
            h, w = self.image.shape[:2]
            k = 0
            while (w >> k) >= 2 * width and (h >> k) >= 2 * height:
                k += 1
            img = self.halved(k)
            if img.shape[1] != width or img.shape[0] != height:
                img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
            self._shrunk[key] = img
        return self._shrunk[key]
