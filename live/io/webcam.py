"""An OpenCV camera (``webcam``, ``webcam:N``, ``/dev/videoN``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import cv2
import numpy as np

from live.frames import EndOfStream, Frame
from live.io.base import SourceError
from live.io.worker import Worker

log = logging.getLogger("live.io.webcam")


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

    def stats(self) -> dict[str, Any]:
        return {"camera": self.status}

    def _release(self) -> None:  # worker thread: after any grab in flight, even a re-open
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    async def close(self) -> None:
        self._closed = True
        await self._worker.run(self._release)
        self._worker.shutdown()

