"""A moving figure on a textured background: a camera for machines without one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cv2
import numpy as np

from live.frames import EndOfStream, Frame


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

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        """Nothing to release."""

