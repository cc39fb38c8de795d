"""A local window (OpenCV) to look at the output without a video call."""

from __future__ import annotations

import functools
import os
import platform
import sys

import cv2
import numpy as np

from live.frames import EndOfStream, Frame
from live.io.base import DroppingSink, SinkError, check_image, flatten_alpha


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


class PreviewSink(DroppingSink):
    """A local window (OpenCV) to look at the output without a video call.

    'q' or Esc (or closing the window) sets ``closed_by_user``, and the next
    ``write`` raises ``EndOfStream``: this output has ended (the pipeline stops
    when it was the last one). All window calls run on the sink's one worker thread:
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
                            "#978); import cv2 (or live.io.preview) before anything imports av")
        super().__init__("live-preview")
        self.title = title
        self.closed_by_user = False
        self._inline = platform.system() == "Darwin"
        self._opened = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        check_image(image)
        if self.closed_by_user:
            raise EndOfStream
        if self._closed or self._drops():
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

