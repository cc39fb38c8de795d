"""Where frames come from and where they go: the factories.

Shaped like aiortc's codecs package: the contracts are in ``base.py``, each
backend in a file of its own, imported here only when it is chosen — so
``live run --output preview`` loads neither aiortc nor pyvirtualcam, and a
webcam source does not load PyAV.
"""

from __future__ import annotations

import logging
from pathlib import Path

from live.config import OutputSettings, SettingsError, SourceSettings
from live.io.base import NullSink, Sink, SinkError, Source, SourceError

__all__ = ["NullSink", "Sink", "SinkError", "Source", "SourceError", "create_sink",
           "open_source"]

log = logging.getLogger("live.io")


def open_source(settings: SourceSettings) -> Source:
    """``webcam``, ``webcam:N``, ``/dev/videoN``, ``synthetic``, or a video file path."""
    spec = settings.spec
    if spec == "synthetic":
        from live.io.synthetic import SyntheticSource

        return SyntheticSource(settings.width, settings.height, settings.fps)
    if spec == "webcam" or spec.startswith("webcam:") or spec.startswith("/dev/video"):
        from live.io.webcam import WebcamSource

        device: int | str = spec
        if not spec.startswith("/dev/video"):
            index = spec.partition(":")[2] or "0"
            if not index.isdigit():
                raise SettingsError(f"source {spec!r}: expected webcam:N with N a camera number")
            device = int(index)
        return WebcamSource(device, settings.width, settings.height, settings.fps)
    path = Path(spec)
    if path.is_file():
        from live.io.files import FileSource

        return FileSource(path, loop=settings.loop, realtime=settings.realtime)
    raise SourceError(f"source {spec!r} is neither a camera (webcam, webcam:N, /dev/videoN), "
                      "'synthetic', nor an existing video file")


def create_sink(output: OutputSettings, source_fps: float, transparent: bool, *,
                pace: bool = False) -> Sink:
    """The sink ``output.target`` names: vcam, preview, null, /dev/videoN or a video file.

    ``pace`` (virtual camera only): slow a faster-than-real-time source down
    to the output fps, see VirtualCameraSink.
    """
    target = output.target.strip()
    fps = output.fps or source_fps
    if target == "vcam" or target.startswith("/dev/video"):
        from live.io.vcam import VirtualCameraSink

        if transparent:
            log.warning("a virtual camera has no alpha: the transparent background shows "
                        "as black")
        device = target if target.startswith("/dev/video") else output.vcam_device
        return VirtualCameraSink(device, output.vcam_backend, fps, pace=pace)
    if target == "preview":
        from live.io.preview import PreviewSink

        return PreviewSink("live")
    if target == "null":
        return NullSink()
    from live.io.files import RECORD_FORMATS, RecorderSink

    if Path(target).suffix.lower() in RECORD_FORMATS:
        try:
            return RecorderSink(target, fps, transparent)
        except SinkError as exc:
            raise SettingsError(f"output.target: {exc}") from None
    raise SettingsError(f"output.target {target!r}: expected vcam, preview, null, a device "
                        f"such as /dev/video10, or a file ending in "
                        f"{', '.join(RECORD_FORMATS)}")
