"""Frames to a virtual camera (pyvirtualcam): v4l2loopback, OBS or Unity Capture."""

from __future__ import annotations

import logging
import platform
from typing import Any

import numpy as np
import pyvirtualcam
from pyvirtualcam.camera import BACKENDS

from live.frames import Frame
from live.io.base import (DroppingSink, SinkError, check_image, even_crop, flatten_alpha,
                          positive_fps, to_open_size)

log = logging.getLogger("live.io.vcam")

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


class VirtualCameraSink(DroppingSink):
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
        self.fps = positive_fps(fps, "virtual camera")
        if backend is not None and backend not in BACKENDS:  # pyvirtualcam would KeyError
            raise SinkError(f"no virtual camera backend {backend!r} on this system (available: "
                            f"{sorted(BACKENDS) or 'none'}); {_vcam_hint()}")
        super().__init__("live-vcam")
        self.device = device
        self.backend = backend
        self.pace = pace
        self.size: tuple[int, int] | None = None
        self.pixel_format: Any = None  # the pyvirtualcam.PixelFormat in use, once open
        self._camera: Any = None
        self._resizing = False

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        check_image(image)
        if self._closed:
            raise SinkError("write to a closed virtual camera sink")
        if self._drops():  # (raises what the last send raised)
            return
        if self._camera is None:  # opened here, not in _send, so a missing device fails now
            h, w = even_crop(image).shape[:2]
            self._camera = await self._worker.run(self._open, w, h)
        sent = self._worker.submit(self._send, image)
        if self.pace:
            await sent

    def _send(self, image: np.ndarray) -> None:  # worker thread
        image = to_open_size(self, even_crop(flatten_alpha(image)), "virtual camera")
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

