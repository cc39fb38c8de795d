"""Segmenters: a frame in, a soft person matte out.

Every engine (the embedded selfie model, streaming SAM 2) implements the small
``Segmenter`` protocol, so the pipeline, the matte stage and the control panel
never care which one runs. Alphas come back at the model's own resolution; the
matte stage upsamples them guided by the full-resolution frame.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from live.config import EngineSettings, SettingsError
from live.frames import I420, Pyramid


class PromptError(ValueError):
    """A prompt the engine cannot take (outside the frame, unknown object, no prompts)."""


@dataclass(frozen=True)
class Prompt:
    """A user's hint about which object to follow, in full-frame pixel coordinates.

    ``points`` are (x, y, label) with label 1 = foreground, 0 = background.
    ``box`` is (x0, y0, x1, y1). ``mask`` is a HxW bool/float array at frame size.
    """

    obj_id: int = 1
    points: tuple[tuple[float, float, int], ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False)
    clear_old_points: bool = True


@runtime_checkable
class Segmenter(Protocol):
    name: str
    settings: EngineSettings  # replaced between frames when a knob needs no new model

    def step(self, frame: np.ndarray | I420 | Pyramid) -> np.ndarray:
        """Alpha in [0, 1], float32, HxW at the model's resolution, for this frame.

        ``frame``: a BGR image, an I420 picture, or the frame's ``Pyramid``. Its
        shared smaller copies spare an engine that needs a small input its own
        resize; one that needs the whole BGR frame takes ``Pyramid.of(frame).image``."""

    def reset(self) -> None:
        """Forget all temporal state (tracked objects, memories)."""

    def check_prompt(self, prompt: Prompt) -> None:
        """Raise PromptError now if ``add_prompt`` would refuse it (no clicks, outside the
        frame, unknown object). Cheap and safe while a frame is being processed, so a
        control panel gets its answer at once."""

    def add_prompt(self, prompt: Prompt) -> None:
        """Apply a prompt to the next frame; raises PromptError where unsupported."""

    def stats(self) -> dict[str, Any]:
        """Engine-specific live figures for the status line (e.g. memory bank bytes)."""

    def close(self) -> None:
        """Give back what the engine borrowed (the selfie interpreters return to their
        pool); the engine is not used after it."""


def gpu_device() -> str | None:
    """``"cuda"`` or ``"mps"`` when torch sees one, else None (also when torch is missing,
    without the [sam2] extra, or broken: the embedded engine works). The one GPU check."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
    except Exception:
        pass
    return None


def resolve_engine_name(settings: EngineSettings) -> str:
    """``auto`` means SAM 2 only when it can run well: a checkpoint and a GPU.

    The checkpoint is looked for first: importing torch to ask about a GPU costs
    seconds and hundreds of MB, which a machine without SAM 2 should never pay.
    """
    if settings.name != "auto":
        return settings.name
    from live.checkpoints import sam2_checkpoint_path

    if not sam2_checkpoint_path(settings).is_file():
        return "selfie"  # decided without importing torch (~500 MB that never goes back)
    return "sam2" if gpu_device() is not None else "selfie"


#: How this process's sam2 engines get a remote stream for given settings (None: a
#: model here). Set in a cluster's session workers (live.serve.sam2_serve).
_remote_sam2: Callable[[EngineSettings], Any] | None = None


def use_remote_sam2(streams: Callable[[EngineSettings], Any] | None) -> None:
    """From now on, a sam2 engine takes ``streams(settings)`` as its SAM 2 stream when
    that is not None (its memory bank then lives elsewhere, e.g. on a Serve replica)."""
    global _remote_sam2
    _remote_sam2 = streams


def create_segmenter(settings: EngineSettings) -> Segmenter:
    """The engine named by the settings, ready to ``step``."""
    name = resolve_engine_name(settings)
    if name == "selfie":
        from live.segment.selfie import SelfieSegmenter

        return SelfieSegmenter(settings)
    if name == "sam2":
        stream = _remote_sam2(settings) if _remote_sam2 is not None else None
        if stream is None:  # a local model: its software and checkpoint must be here
            from live.checkpoints import require_sam2_checkpoint, require_sam2_software

            require_sam2_software()  # neither check imports torch: a refusal costs nothing
            require_sam2_checkpoint(settings)
        from live.segment.auto_prompt import AutoPromptedSAM2

        return AutoPromptedSAM2(settings, stream=stream)
    raise SettingsError(f"unknown engine {name!r}")


def warm_up(segmenter: Segmenter, width: int = 1280, height: int = 720) -> None:
    """Pay an engine's first-use costs now (runtime import, model files, LiteRT's
    XNNPACK delegate), so the first frame of the first session does not wait.

    The selfie models are fetched first and in the open, so a download shows its
    progress; then one black frame goes through with native stderr muted, which
    swallows LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" line (printed
    once per process, by C++, straight to fd 2: no setting turns it off).
    """
    from live.checkpoints import fetch_selfie

    fetch_selfie()  # both engines run the selfie model (SAM 2 is prompted from it)
    with native_stderr_muted():
        segmenter.step(np.zeros((height, width, 3), np.uint8))
    segmenter.reset()


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Point file descriptor 2 at the null device for the duration: what native code
    writes there is lost, and so is anything Python writes to stderr meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
