"""``live`` command line: a thin adapter from flags to settings to a pipeline.

    live run     camera/file/synthetic → virtual camera, preview or file
    live serve   the WebRTC page and control panel
    live fetch   download model files
    live doctor  what is present, what is missing, and the fix for each
    live config  print the effective settings as TOML
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from live import __version__
from live.config import (SAM2_SIZES, EngineSettings, Settings, SettingsError,
                         add_cli_arguments, settings_from_args)
from live.signals import install_stop_signals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="live", description="Real-time virtual background.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"live {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="process a camera or file into a virtual camera, "
                         "a preview window or a file",
                         usage="live run [--source SOURCE] [--output OUTPUT] "
                               "[--background BACKGROUND] [--engine ENGINE] [option ...]")
    add_cli_arguments(run, sections=("source", "output", "background", "engine", "matte",
                                     "server"))
    own = run.add_argument_group("run")
    own.add_argument("--frames", type=int, default=None, help="stop after N frames")
    own.add_argument("--quiet", action="store_true",
                     help="print nothing but errors (no status line, no summary)")
    own.add_argument("--no-control", action="store_true",
                     help="do not open the control panel websocket")

    serve = sub.add_parser("serve", help="serve the WebRTC page and control panel")
    add_cli_arguments(serve, sections=("engine", "matte", "background", "server", "webrtc"))

    fetch = sub.add_parser("fetch", help="download model files into checkpoints/")
    fetch.add_argument("what", choices=["selfie", "sam2"],
                       help="selfie: the embedded models (from the mediapipe wheel on PyPI); "
                       "sam2: a SAM 2.1 checkpoint from Meta")
    fetch.add_argument("--model", default=EngineSettings().sam2_model, choices=SAM2_SIZES,
                       help="SAM 2.1 size (default tiny: 156 MB; large: 898 MB)")

    sub.add_parser("doctor", help="check cameras, virtual camera, GPU and model files")

    config = sub.add_parser("config", help="print the effective settings as TOML")
    add_cli_arguments(config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from live.checkpoints import ModelMissingError
    from live.composite import BackgroundError

    try:
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "doctor":
            from live.doctor import run_doctor

            return run_doctor()
        settings = settings_from_args(args)
        if args.command == "config":
            print(to_toml(settings))
            return 0
        check_background(settings)  # a bad file fails now, not after the model loaded
        if args.command == "serve":
            from live.segment import create_segmenter, resolve_engine_name, warm_up
            from live.serve.server import serve

            if settings.server.cluster and resolve_engine_name(settings.engine) == "sam2":
                from live.checkpoints import fetch_selfie

                fetch_selfie()  # SAM 2 loads on the cluster's replicas, not here
            else:
                warm_up(create_segmenter(settings.engine))  # the first peer finds it ready
            serve(settings)
            return 0
        return asyncio.run(run_pipeline(settings, max_frames=args.frames, quiet=args.quiet,
                                        control=not args.no_control))
    except (SettingsError, ModelMissingError, BackgroundError) as exc:
        print(f"live: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `live config | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except RuntimeError as exc:  # SourceError, SinkError, BackgroundError...: say it plainly
        print(f"live: {exc}", file=sys.stderr)
        return 1


def check_background(settings: Settings) -> None:
    """Open the background image/video once, so a bad path is reported before start-up."""
    from live.composite import Compositor

    if settings.background.mode in ("image", "video"):
        Compositor(settings.background).close()


def check_virtual_camera(settings: Settings) -> None:
    """On Linux a virtual camera needs v4l2loopback: say so before waiting for a frame."""
    import platform

    target = settings.output.target
    if target != "vcam" or settings.output.vcam_backend or settings.output.vcam_device:
        return
    from live.doctor import loopback_devices
    from live.io import SinkError
    from live.io.vcam import V4L2LOOPBACK_FIX

    if platform.system() == "Linux" and not loopback_devices():
        raise SinkError(
            f"no virtual camera device. Load v4l2loopback: {V4L2LOOPBACK_FIX} "
            "(see the README). No driver? `live serve` (make run) shows the result in the "
            "browser, and --output preview in a window")


def _fetch(args: argparse.Namespace) -> int:
    from live.checkpoints import fetch_sam2, fetch_selfie

    if args.what == "selfie":
        fetch_selfie()
    else:
        print(fetch_sam2(args.model))
    return 0


async def run_pipeline(settings: Settings, max_frames: int | None = None, quiet: bool = False,
                       control: bool = True) -> int:
    """``live run``: one pipeline, its status line, Ctrl-C to stop with files finalised."""
    pipeline = await build_pipeline(settings, max_frames)
    processor = pipeline.processor
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("live.pipeline").setLevel(logging.CRITICAL)  # printed below instead

    stopper = _Stopper(pipeline, settings.output.target, asyncio.get_running_loop())
    install_stop_signals(stopper.stop)
    control_server = (await _start_control(settings, processor, pipeline, quiet)
                      if control else None)
    status = asyncio.create_task(_status_line(pipeline)) if not quiet else None
    try:
        await pipeline.run()
    finally:
        stopper.done()
        if status is not None:
            status.cancel()
            print(file=sys.stderr)
        if control_server is not None:
            await control_server.stop()
    code = _outcome(pipeline)
    if not quiet and _is_file_output(settings.output.target):
        print(f"live: {describe_recording(settings.output.target)}", file=sys.stderr)
    return code


def _is_file_output(target: str) -> bool:
    from live.io.files import RECORD_FORMATS  # PyAV: loaded already for a file output

    return os.path.splitext(target.strip())[1].lower() in RECORD_FORMATS


def _outcome(pipeline: Any) -> int:
    """The exit status, with the reason on stderr: a source or output that failed (a full
    disk, a broken file) is a failure, however many frames made it out before."""
    for message in pipeline.errors:
        print(f"live: {message}", file=sys.stderr)
    corrupt = pipeline.metrics().get("corrupt_packets")
    if corrupt:
        print(f"live: {corrupt} damaged packet(s) of the source were skipped", file=sys.stderr)
    if pipeline.failures or (pipeline.frames_out == 0 and pipeline.errors):
        reason = (pipeline.failures or list(pipeline.errors))[0]
        print(f"live: FAILED after {pipeline.frames_out} frames: {reason}", file=sys.stderr)
        return 1
    return 0


class _Stopper:
    """Ctrl-C / SIGTERM: stop the pipeline, and if it has not finished within
    ``GRACE_S`` (an output blocked in a write: an unread pipe, a hung device), or on
    a second signal, exit at once with status 1. A recording keeps every frame it
    wrote (it is written in fragments)."""

    GRACE_S = 0.8

    def __init__(self, pipeline: Any, target: str, loop: asyncio.AbstractEventLoop):
        self.pipeline, self.target, self.loop = pipeline, target, loop
        self._timer: asyncio.TimerHandle | None = None

    def stop(self) -> None:
        if self._timer is not None:
            self._force()
        self.pipeline.stop()
        self._timer = self.loop.call_later(self.GRACE_S, self._force)

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _force(self) -> None:
        print(f"\nlive: stopped; the output ({self.target}) did not finish within "
              f"{self.GRACE_S:g} s (it is blocked) and may be incomplete", file=sys.stderr,
              flush=True)
        os._exit(1)  # a thread blocked in write() cannot be joined: leave without it


def describe_recording(path: str) -> str:
    """What a file run wrote, read back from the file itself: path, frames, duration."""
    import av

    frames, start, end = 0, None, 0.0
    try:
        with av.open(path) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size and packet.pts is not None:
                    frames += 1
                    t = float(packet.pts * packet.time_base)
                    start = t if start is None else min(start, t)
                    end = max(end, t + float((packet.duration or 0) * packet.time_base))
    except (OSError, av.FFmpegError, IndexError) as exc:
        return f"{path} was not written ({exc})"
    return f"wrote {path}: {frames} frames, {end - (start or 0.0):.2f} s"


async def _start_control(settings: Settings, processor: Any, pipeline: Any,
                         quiet: bool = False, tries: int = 10) -> Any:
    """Open this pipeline's own control panel: on ``server.port``, or, when that is
    taken (a ``live serve`` beside it), on the next free port; its URL is printed."""
    from live.serve.server import ControlServer

    port, last = settings.server.port, None
    for attempt in range(tries if port else 1):
        here = settings.merged({"server": {"port": port + attempt}}) if port else settings
        server = ControlServer(here, sessions={"run": (processor, pipeline)})
        try:
            await server.start()
        except OSError as exc:
            last = exc
            continue
        if not quiet:
            taken = f" (port {port} is taken, by `live serve`?)" if attempt else ""
            print(f"live: control panel at {server.operator_url}{taken}", file=sys.stderr)
        return server
    print(f"live: control panel not started ({last}); continuing without it", file=sys.stderr)
    return None


async def build_pipeline(settings: Settings, max_frames: int | None = None) -> Any:
    """What ``live run`` runs: the source, the processor and the one sink, not started."""
    from live.io import create_sink, open_source
    from live.pipeline import FrameProcessor, Pipeline
    from live.segment import warm_up

    check_virtual_camera(settings)
    source = open_source(settings.source)
    processor = None
    try:
        processor = FrameProcessor(settings)  # may fail: a model or background file
        warm_up(processor.segmenter, settings.source.width, settings.source.height)
        sink = create_sink(settings.output, source.fps,
                           transparent=settings.background.mode == "transparent",
                           pace=not source.live)  # a file played into a camera: real time
    except Exception:
        if processor is not None:
            processor.close()
        await source.close()
        raise
    if max_frames is not None:
        source = _Limited(source, max_frames)
    return Pipeline(source, [sink], processor, name="run")


class _Limited:
    """Ends a source after N frames (``--frames``)."""

    def __init__(self, source: Any, frames: int):
        self._source, self._left = source, frames
        self.live, self.fps = source.live, source.fps

    async def read(self) -> Any:
        from live.frames import EndOfStream

        if self._left <= 0:
            raise EndOfStream
        self._left -= 1
        return await self._source.read()

    async def close(self) -> None:
        await self._source.close()

    def stats(self) -> dict[str, Any]:
        return self._source.stats()


def format_status(m: dict[str, Any]) -> str:
    st = m["stage_ms"]
    if not m["frames"]:
        return "waiting for the first frame..." + (f" ({m['errors'][-1]})" if m["errors"] else "")
    stages = " ".join(f"{k} {st[k]['p50']:.1f}" for k in ("segment", "matte", "composite")
                      if k in st)
    age = f" | latency {m['mask_age_ms']:.0f} ms" if m["mask_age_ms"] is not None else ""
    return (f"{m['fps']:5.1f} fps | {stages} ms | frames {m['frames']} dropped "
            f"{m['dropped']}{age}")


async def _status_line(pipeline: Any) -> None:
    """Once a second, the status line."""
    while True:
        await asyncio.sleep(1.0)
        print("\r" + format_status(pipeline.metrics()).ljust(90), end="", file=sys.stderr,
              flush=True)


def to_toml(settings: Settings) -> str:
    lines = []
    for section, values in settings.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} =")
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            elif isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value)}")
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
