"""The one settings schema.

The CLI flags, the TOML config file and the control panel's JSON messages are
all read through the dataclasses below, so a default or a limit is written in
exactly one place. Each field's ``metadata`` carries its help text and bounds;
``validate`` enforces them and ``add_cli_arguments`` turns them into flags.

Update rule: a settings object is never mutated in place. ``merged(patch)``
returns a new validated object, so a running pipeline swaps settings
atomically between two frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and the fix."""


def _f(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       flag: str | None = None, form: tuple[re.Pattern[str], str] | None = None,
       step: int | None = None, rebuild: bool = False) -> Any:
    """A setting: its default, help, numeric bounds (and ``step``, what a whole number
    must be a multiple of), CLI flag, for a string the
    (pattern, how to say it) it must match, and for an engine setting whether a
    change needs a new model (``rebuild``; the others are read frame by frame)."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "flag": flag,
                                            "form": form, "step": step,
                                            "rebuild": rebuild})


#: The SAM 2.1 sizes: the one list (checkpoints, ``live fetch`` and ``live doctor`` read it).
SAM2_SIZES = ("tiny", "small", "base_plus", "large")
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")  # always .fullmatch: "$" lets a "\n" through
# Numbers written as text (CLI flags, --background blur:N): plain ASCII digits only, so
# " 5 ", "5_0" and "٣" (which int() takes) are refused like any other typo.
INT_TEXT = re.compile(r"[+-]?[0-9]+")
FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class EngineSettings:
    name: Literal["auto", "selfie", "sam2"] = _f(
        "auto", "segmenter: selfie (embedded, CPU), sam2 (streaming SAM 2), auto (sam2 when a "
        "checkpoint and a GPU are present, else selfie)", flag="--engine", rebuild=True)
    selfie_model: Literal["auto", "square", "landscape"] = _f(
        "auto", "selfie model variant; auto picks by the frame's aspect ratio", rebuild=True)
    selfie_crop: bool = _f(
        True, "selfie engine: run the model on a crop around the tracked people (a small or "
        "distant person is seen at the model's full input size); the whole frame is searched "
        "every selfie_refresh_frames frames for people coming in")
    selfie_refresh_frames: int = _f(
        10, "selfie engine: frames between two whole-frame passes while people are tracked "
        "(put off, up to 3 times as long, while nothing moves outside the crop)",
        lo=1, hi=1000)
    selfie_hold_frames: int = _f(
        4, "selfie engine: at most this many frames a person's mask is held when the model "
        "loses them while the picture there barely changed (0 = believe every drop)",
        lo=0, hi=100)
    sam2_model: Literal[SAM2_SIZES] = _f(
        "tiny", "SAM 2.1 model size", flag="--model", rebuild=True)
    checkpoint: str | None = _f(
        None, "path of a SAM 2 checkpoint (default: checkpoints/sam2.1_hiera_<model>.pt)",
        flag="--checkpoint", rebuild=True)
    image_size: int | None = _f(
        None, "SAM 2 input size, a multiple of 32 (default 1024 on a GPU, 512 on the CPU)",
        lo=64, hi=2048, step=32, rebuild=True)
    device: Literal["auto", "cpu", "cuda", "mps"] = _f("auto", "torch device for SAM 2",
                                                      flag="--device", rebuild=True)
    compile: bool = _f(False, "torch.compile the SAM 2 image encoder (CUDA)", rebuild=True)
    max_cond_frames: int = _f(
        4, "conditioning (prompted) frames SAM 2 attends to; older ones are freed (at least 2, "
        "as SAM 2's frame selection requires)", lo=2, hi=64, rebuild=True)
    reanchor_frames: int = _f(
        15, "re-prompt SAM 2 from the selfie mask after this many frames of strong "
        "disagreement", lo=1, hi=10_000)
    reanchor_iou: float = _f(
        0.3, "IoU between SAM 2 and the selfie mask under which they disagree", lo=0.0, hi=1.0)
    subjects: Literal["all", "main"] = _f(
        "all", "keep every person, or only the main subject", flag="--subjects")


@dataclass(frozen=True)
class MatteSettings:
    feather: int = _f(3, "edge feather radius in full-resolution pixels (guided filter); "
                         "0 = plain bilinear upsampling. Whatever the radius, the edge moves "
                         "at most one pixel of the model's mask (5 px at 720p) from the model's",
                      lo=0, hi=64, flag="--feather")
    feather_eps: float = _f(1e-3, "guided filter regulariser: larger = softer edges",
                            lo=1e-6, hi=1.0)
    edge_contrast: float = _f(
        3.0, "steepen the model's blurry edge around 0.5 before feathering, so the soft "
        "border comes from the frame's own edges and the feather radius, not from the "
        "model's low resolution (1 = keep the model's edge; higher = less halo)", lo=1.0, hi=20.0)
    guide_size: int = _f(256, "long side, in pixels, of the grid where the guided filter's "
                              "coefficients are computed (larger = finer edges, slower)",
                         lo=32, hi=2048)
    smoothing: Literal["adaptive", "ema", "off"] = _f(
        "adaptive", "temporal smoothing: adaptive leans on history only where the new mask is "
        "uncertain or changes little; ema is a plain moving average", flag="--smoothing")
    ema: float = _f(0.5, "weight of the new mask in ema mode (1 = no smoothing; at least 0.05, "
                         "so an old mask always fades)", lo=0.05, hi=1.0)
    adaptive_min_weight: float = _f(
        0.05, "adaptive mode: weight of the new mask where it agrees with history "
        "(lower = steadier, more lag on slow edges; at least 0.05, so an old mask always "
        "fades)", lo=0.05, hi=1.0)
    adaptive_change_lo: float = _f(
        0.05, "adaptive mode: a per-pixel change below this is treated as noise (full "
        "smoothing)", lo=0.0, hi=1.0)
    adaptive_change_hi: float = _f(
        0.5, "adaptive mode: a per-pixel change above this is treated as motion and taken "
        "at once (no smoothing)", lo=0.0, hi=1.0)
    adaptive_persist_frames: int = _f(
        8, "adaptive mode: a mask that differs from the smoothed one by more than "
        "adaptive_persist_change for this many frames in a row is taken at once, so a "
        "smoothed-over error cannot linger (0 = never)", lo=0, hi=1000)
    adaptive_persist_change: float = _f(
        0.3, "adaptive mode: the difference that counts towards adaptive_persist_frames",
        lo=0.0, hi=1.0)
    adaptive_motion: float = _f(
        0.2, "adaptive mode: change of the picture itself (0-1 of full grey scale) at which a "
        "mask change counts fully as motion; smaller picture changes scale it down, so mask "
        "noise on a still scene is smoothed away (0 = ignore the picture)", lo=0.0, hi=1.0)
    adaptive_release: float = _f(
        0.7, "adaptive mode: where the new mask says background (below 0.3) and is lower than "
        "history, its weight is at least this, so a moving arm leaves no ghost behind even "
        "where the picture changed little (0 = drops are smoothed like rises)", lo=0.0, hi=1.0)
    motion_compensation: bool = _f(
        True, "adaptive mode: carry the smoothed mask along the picture's motion (optical "
        "flow on the selfie engine's grid, ~0.5 ms; not on SAM 2's larger one) before "
        "blending, so a moving edge is smoothed with where it moved to, not where it was: "
        "less lag and flicker")
    guide_memory: int = _f(
        32, "with smoothing on, the guided filter fits its edges on the picture averaged "
        "like the smoothed mask, at most this many grey levels (of 255) from the current "
        "frame, then applies them to the current frame: moving edges land where they are "
        "now (less lag; 0 = fit on the current frame)", lo=0, hi=255)
    steady: float = _f(
        0.38, "steady edges: at the person's edge, a full-resolution pixel whose alpha "
        "changes by much less than this from one frame to the next moves only part of the "
        "way ((change/steady)^4 + 2 %), so edge wobble stays put while real motion "
        "passes at once (less flicker; 0 = off; needs feather and smoothing)", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class BackgroundSettings:
    mode: Literal["blur", "color", "image", "video", "transparent"] = _f(
        "blur", "what replaces the background")
    blur: int = _f(21, "blur strength (kernel radius in pixels at 720p)", lo=1, hi=200)
    color: str = _f("#00b140", "solid colour as #RRGGBB", form=(HEX_COLOR, "#RRGGBB"))
    image: str | None = _f(None, "background image file")
    video: str | None = _f(None, "background video file (loops)")
    fit: Literal["cover", "contain"] = _f(
        "cover", "how an image or video fills the frame: cover crops the overflow, contain "
        "shows all of it (bars: a blurred copy of an image, black for a video)")


@dataclass(frozen=True)
class SourceSettings:
    spec: str = _f("webcam", "webcam, webcam:N, a device path, a video file, or synthetic",
                   flag="--source")
    width: int = _f(1280, "requested capture width", lo=16, hi=7680)
    height: int = _f(720, "requested capture height", lo=16, hi=4320)
    fps: float = _f(30.0, "requested capture rate", lo=1.0, hi=240.0)
    loop: bool = _f(False, "loop a video file source", flag="--loop")
    realtime: bool = _f(False, "pace a file source at its own frame rate and drop stale "
                               "frames, as a camera would (default: process every frame)")


@dataclass(frozen=True)
class OutputSettings:
    target: str = _f("vcam", "vcam, preview, or an output file (.mp4, .webm, .mov)",
                     flag="--output")
    vcam_device: str | None = _f(None, "virtual camera device, e.g. /dev/video10")
    vcam_backend: str | None = _f(None, "pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    fps: float | None = _f(None, "output frame rate (default: the source's)", lo=1.0, hi=240.0)


@dataclass(frozen=True)
class ServerSettings:
    host: str = _f("127.0.0.1", "address to bind; anything but loopback needs --allow-remote")
    port: int = _f(8787, "HTTP/websocket port (0 = any free port)", lo=0, hi=65535,
                   flag="--port")
    allow_remote: bool = _f(False, "allow binding to a non-loopback address", flag="--allow-remote")
    token: str | None = _f(None, "access token of the page: it starts and steers its own video "
                                 "sessions (default: a new random one each start)")
    operator_token: str | None = _f(
        None, "the operator's token: also sees and steers every session, e.g. `live run`'s "
        "(default: a new random one each start)")
    media_dir: str | None = _f(
        None, "folder whose image and video files clients may pick as backgrounds, by name; "
        "no other server file is ever opened for a client", flag="--media-dir")
    workers: int | None = _f(
        None, "worker processes the WebRTC sessions run in, each session on the least-loaded "
        "one (default: one per CPU core; 0 = every session in the server's own process)",
        lo=0, hi=256, flag="--workers")
    worker_threads: int = _f(
        1, "threads each session worker gives OpenCV and the selfie model (torch keeps its "
        "own: SAM 2 on the CPU wants every core). The workers already run one per core: "
        "a second thread cut a 720p frame's latency by ~2.5 ms but cost ~6 ms more CPU",
        lo=1, hi=64)
    cluster: str | None = _f(
        None, "run each session's worker as a Ray actor in this cluster: a head's address, "
        "'auto' (the running cluster), or 'local' (start one here); needs pip install "
        "'live[cluster]'", flag="--cluster")
    sam2_replicas: int | None = _f(
        None, "with --cluster and the sam2 engine: replicas of the Ray Serve deployment that "
        "runs SAM 2 for every session (default: one per GPU of the cluster; 1 without GPUs)",
        lo=1, hi=256)
    sam2_max_batch: int = _f(
        8, "with --cluster and the sam2 engine: most frames of different sessions one replica's "
        "image encoder takes as one batch (also its most requests at once)", lo=1, hi=64)
    sam2_replica_cpus: float = _f(
        1.0, "with --cluster and the sam2 engine: CPUs each SAM 2 replica reserves (on a "
        "CPU-only cluster also its torch threads: Ray sets them from it)", lo=0.1, hi=256)


@dataclass(frozen=True)
class WebRTCSettings:
    """What a browser peer sends and gets back. The operator's (clients read, never
    change them): the bitrate bounds also bound aiortc's encoders process-wide."""

    # VP8 by measurement (2026-11-29, 1280x720 at 2.5 Mbps, 2 cores): aiortc's VP8
    # encoder takes 10 ms of CPU a frame, its H.264 (libx264) 29 ms; in chromium the
    # H.264 return video delivered ~45 % of the server's frames, VP8 ~65 % (bench.browser).
    codec: Literal["VP8", "H264"] = _f(
        "VP8", "video codec both ways when the browser offers it (else the browser's first)")
    max_width: int = _f(1280, "widest video asked of the browser's camera and sent back",
                        lo=160, hi=3840)
    max_height: int = _f(720, "tallest video asked of the browser's camera and sent back",
                         lo=90, hi=2160)
    max_bitrate_kbps: int | None = _f(
        None, "bitrate ceiling of the browser's camera video (the video sent back: "
        "return_bitrate_kbps); lower it for a slow link (default: sized to "
        "max_width x max_height, 0.09 bits per pixel at 30 fps: 2488 at 1280x720)",
        lo=100, hi=50_000)
    min_bitrate_kbps: int | None = _f(
        None, "video bitrate floor each way: the bandwidth estimate never goes below it, so "
        "the resolution holds (default: 40 % of the ceiling)", lo=50, hi=50_000)
    # The processed picture needs fewer bits than the camera's: its background is
    # blurred or still. `python -m bench.media_path --return-kbps 2488,1493`
    # (2026-11-30, 1280x720 VP8): 49.5 dB PSNR against the composited frames at
    # 1.5 Mbps, 51.1 at 2.5 (the raw camera at 2.5: 44.5), for 0.44 ms less
    # encoding a frame and smaller frames on the wire (16 KB at most against 25).
    return_bitrate_kbps: int | None = _f(
        None, "bitrate ceiling of the processed video sent back (default: 60 % of the "
        "ceiling, never under the floor: 1493 at 1280x720)", lo=100, hi=50_000)

    def resolved(self) -> "WebRTCSettings":
        """These settings with the bitrate bounds that were left to their defaults filled in."""
        hi = self.max_bitrate_kbps or round(self.max_width * self.max_height * 30 * 0.09 / 1000)
        lo = self.min_bitrate_kbps or round(hi * 0.4)
        back = self.return_bitrate_kbps or max(lo, round(hi * 0.6))
        return dataclasses.replace(self, max_bitrate_kbps=hi, min_bitrate_kbps=lo,
                                   return_bitrate_kbps=back)


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    matte: MatteSettings = field(default_factory=MatteSettings)
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    webrtc: WebRTCSettings = field(default_factory=WebRTCSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def merged(self, patch: Mapping[str, Any]) -> "Settings":
        """A new validated Settings with ``patch`` ({section: {name: value}}) applied."""
        if not isinstance(patch, Mapping):
            raise SettingsError("settings must be an object of sections, e.g. "
                                '{"matte": {"feather": 4}}')
        sections = {}
        for sec_field in dataclasses.fields(self):
            sections[sec_field.name] = getattr(self, sec_field.name)
        for sec_name, values in patch.items():
            if sec_name not in sections:
                raise SettingsError(f"unknown settings section {_show(sec_name)}; "
                                    f"expected one of {sorted(sections)}")
            if not isinstance(values, Mapping):
                raise SettingsError(f"settings section {_show(sec_name)} must be an object")
            sections[sec_name] = _merge_section(sections[sec_name], sec_name, values)
        new = Settings(**sections)
        new.validate()
        return new

    def validate(self) -> None:
        """Cross-field checks; per-field bounds are checked in ``merged``."""
        bg = self.background
        if bg.mode == "image" and not bg.image:
            raise SettingsError("background.mode 'image' needs background.image (a file path)")
        if bg.mode == "video" and not bg.video:
            raise SettingsError("background.mode 'video' needs background.video (a file path)")
        if self.matte.adaptive_change_lo >= self.matte.adaptive_change_hi:
            raise SettingsError("matte.adaptive_change_lo must be below matte.adaptive_change_hi, "
                                f"got {self.matte.adaptive_change_lo} and "
                                f"{self.matte.adaptive_change_hi}")
        rtc = self.webrtc.resolved()
        if rtc.min_bitrate_kbps > rtc.max_bitrate_kbps:  # type: ignore[operator]
            raise SettingsError(f"webrtc.min_bitrate_kbps ({rtc.min_bitrate_kbps}) must not "
                                f"exceed webrtc.max_bitrate_kbps ({rtc.max_bitrate_kbps})")
        if not self.server.allow_remote and self.server.host not in LOOPBACK_HOSTS:
            raise SettingsError(f"server.host {self.server.host!r} is not loopback; pass "
                                "--allow-remote to expose the service on the network")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_engine_setting(name: str, value: Any) -> Any:
    """``engine.<name>`` checked by the schema's own rule, for code handed a bare value
    (``StreamingSAM2.build(image_size=...)``): the value, or SettingsError."""
    return getattr(_merge_section(EngineSettings(), "engine", {name: value}), name)


def needs_new_engine(old: EngineSettings, new: EngineSettings) -> bool:
    """Whether going from ``old`` to ``new`` changes a setting marked ``rebuild``."""
    return any(getattr(old, f.name) != getattr(new, f.name)
               for f in dataclasses.fields(EngineSettings) if f.metadata["rebuild"])


def _setting_fields(sections: tuple[str, ...] | None = None
                    ) -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """(section, field, type hint) for every setting of ``sections`` (default: all)."""
    for sec_field in dataclasses.fields(Settings):
        if sections is not None and sec_field.name not in sections:
            continue
        section_type = sec_field.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            yield sec_field.name, f, hints[f.name]


def _choices(hint: Any) -> tuple[Any, ...] | None:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def schema(sections: tuple[str, ...] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Defaults, bounds, choices and help of every setting, for the control panel's widgets."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section, f, hint in _setting_fields(sections):
        entry = {"default": f.default, "help": f.metadata["help"]}
        if f.metadata.get("lo") is not None:
            entry.update(min=f.metadata["lo"], max=f.metadata["hi"])
        if _choices(hint):
            entry["choices"] = list(_choices(hint))
        out.setdefault(section, {})[f.name] = entry
    return out


def _merge_section(current: Any, sec_name: str, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(type(current))
    known = {f.name: f for f in dataclasses.fields(current)}
    changes = {}
    for name, value in values.items():
        if name not in known:
            raise SettingsError(f"unknown setting {sec_name}.{_show(name, quote=False)}; "
                                f"expected one of {sorted(known)}")
        changes[name] = _check_value(f"{sec_name}.{name}", hints[name], known[name].metadata, value)
    return dataclasses.replace(current, **changes)


def _show(value: Any, limit: int = 40, quote: bool = True) -> str:
    """``value`` for an error message, cut short: a reply never echoes megabytes."""
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _check_value(path: str, hint: Any, meta: Mapping[str, Any], value: Any) -> Any:
    """``value`` checked against the field's type and bounds: JSON types only (a number
    is a number, not a string holding one; text from the command line is converted by
    ``parse_text`` first)."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        hint = next(a for a in args if a is not type(None))
    if value is None:
        if optional:
            return None
        raise SettingsError(f"{path} cannot be empty")
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if not isinstance(value, str) or value not in choices:
            raise SettingsError(f"{path} must be one of {list(choices)}, got {_show(value)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{path} must be true or false, got {_show(value)}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{path} must be a number, got {_show(value)}")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise SettingsError(f"{path} must be a whole number, got {_show(value)}")
        try:
            num = hint(value)
        except (ValueError, OverflowError):  # int(inf), float(10**400)
            raise SettingsError(f"{path} must be a finite number, got {_show(value)}") from None
        if num != num or num in (float("inf"), float("-inf")):
            raise SettingsError(f"{path} must be a finite number, got {_show(value)}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and num < lo) or (hi is not None and num > hi):
            raise SettingsError(f"{path} must be between {lo} and {hi}, got {_show(num)}")
        if meta.get("step") and num % meta["step"]:
            raise SettingsError(f"{path} must be a multiple of {meta['step']}, got {num}")
        return num
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(f"{path} must be a string, got {_show(value)}")
        if len(value) > 4096:
            raise SettingsError(f"{path} is too long ({len(value)} characters, at most 4096)")
        form = meta.get("form")
        if form is not None and not form[0].fullmatch(value):
            raise SettingsError(f"{path} must look like {form[1]}, got {_show(value)}")
        return value
    raise TypeError(f"unsupported settings type {hint} for {path}")  # a bug in this module


def parse_text(hint: Any, text: str) -> Any:
    """A number typed on the command line, as the JSON value it stands for.

    Only plain ASCII decimal notation: Python's own int() would also take
    " 5 ", "5_0" and "٣". Anything else is returned as is for ``_check_value``
    to refuse with the setting's name.
    """
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if base is int and INT_TEXT.fullmatch(text):
        return int(text)
    if base is float and FLOAT_TEXT.fullmatch(text):
        return float(text)
    return text


def parse_background(spec: str) -> dict[str, Any]:
    """The ``--background`` shorthand: blur | blur:N | #RRGGBB | transparent | IMAGE | VIDEO."""
    if spec == "blur":
        return {"mode": "blur"}
    if spec.startswith("blur:"):
        return {"mode": "blur", "blur": parse_text(int, spec[5:])}
    if spec == "transparent":
        return {"mode": "transparent"}
    if HEX_COLOR.fullmatch(spec):
        return {"mode": "color", "color": spec}
    suffix = Path(spec).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return {"mode": "video", "video": spec}
    if suffix in IMAGE_SUFFIXES:
        return {"mode": "image", "image": spec}
    raise SettingsError(f"--background {spec!r}: expected blur, blur:N, #RRGGBB, transparent, "
                        f"an image ({', '.join(IMAGE_SUFFIXES)}) or a video "
                        f"({', '.join(VIDEO_SUFFIXES)})")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


def load_toml(path: str | Path, base: Settings | None = None) -> Settings:
    """Settings from a TOML file whose tables are the sections ([engine], [matte], ...)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    return (base or Settings()).merged(data)


def add_cli_arguments(parser: argparse.ArgumentParser,
                      sections: tuple[str, ...] | None = None) -> None:
    """One flag per setting of ``sections`` (default: all): ``--section-name``, or
    its short alias alone where the metadata gives one for a switch.

    Every flag defaults to None ("not given") so the dataclass default, or the
    config file's value, is the only default there is; the help shows it.
    """
    groups: dict[str, Any] = {}

    def group(section: str) -> Any:
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
            if section == "background":  # the shorthand first: it is what people type
                groups[section].add_argument(
                    "--background", dest="background_spec", default=None, metavar="BACKGROUND",
                    help="shorthand: blur, blur:N, #RRGGBB, transparent, IMAGE or VIDEO")
        return groups[section]

    for section in sections or ():  # help lists the groups in the order asked for
        group(section)
    for section, f, hint in _setting_fields(sections):
        meta = f.metadata
        names = [f"--{section}-{f.name}".replace("_", "-")]
        if meta.get("flag"):
            names = [meta["flag"]] if hint is bool else [meta["flag"], *names]
        kwargs: dict[str, Any] = {"dest": f"set__{section}__{f.name}",
                                  "default": None, "help": _flag_help(f.default, meta)}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            choices = _choices(hint)
            if choices:
                kwargs["choices"] = choices
            kwargs["metavar"] = None if choices else f.name.upper()
        group(section).add_argument(*names, **kwargs)
    parser.add_argument("--config", default=None, help="TOML config file (sections as tables)")


def _flag_help(default: Any, meta: Mapping[str, Any]) -> str:
    extra = []
    if meta.get("lo") is not None:
        extra.append(f"{meta['lo']:g} to {meta['hi']:g}")
    if default is not None:
        extra.append(f"default {default}")
    text = meta["help"] + (f" [{'; '.join(extra)}]" if extra else "")
    return text.replace("%", "%%")  # argparse formats help with %: "40 %" is text here


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults, then the config file, then the flags given on the command line."""
    settings = load_toml(args.config) if getattr(args, "config", None) else Settings()
    hints = {(section, f.name): hint for section, f, hint in _setting_fields()}
    patch: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key.startswith("set__") and value is not None:
            _, section, name = key.split("__")
            if isinstance(value, str):
                value = parse_text(hints[section, name], value)
            patch.setdefault(section, {})[name] = value
    if getattr(args, "background_spec", None):
        patch.setdefault("background", {}).update(parse_background(args.background_spec))
    return settings.merged(patch)
