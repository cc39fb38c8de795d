"""Matte quality on DAVIS: does our matte beat the peers' recipes?

``python -m bench.quality [--data DIR] [--engine selfie] [--out DIR]
[--sequences a,b] [--max-frames N] [--subjects all|main] [--timing-frames N]
[--layout bgr|i420] [--truth-sigma PX] [--matte NAME=VALUE ...]``

Every ``davis-*`` folder under the data directory (``frames/*.jpg`` plus a
ground-truth ``masks/*.png`` for every frame) is run through one segmenter;
the same low-resolution alphas then go through four post-processing recipes,
so the comparison isolates the matte stage:

- ``raw``: the engine's alpha, bilinearly upsampled;
- ``ema50``: plain EMA with weight 0.5 on the new mask (Linux-Fake-Background-Webcam);
- ``obs``: the OBS background-removal plugin's recipe (see ``ObsRecipe``);
- ``live``: our ``Matte`` with default settings (or those ``--matte`` sets:
  ``--matte steady=0.5 --matte adaptive_motion=0.25`` measures a setting of the
  schema without editing code).

Beside them, two references that are no recipes, scored alike:

- ``model`` (selfie engine only): the selfie model alone, on each whole
  frame, no crops, no hold (the "raw selfie model" of issue 10's table, and
  the engine's output before it learnt to crop). The engine's own work makes
  ``raw`` steadier than this on most sequences, so ``live_flicker_vs_model``
  says how much steadier the user's matte is than the bare model, and
  ``live_flicker_vs_raw`` how much the matte stage alone adds to the engine;
- ``truth_soft``: the ground truth feathered by a Gaussian of
  ``--truth-sigma`` px (of the sequence's frames): what a perfect matte with
  a soft edge scores. Its flicker is the part of the metric that an edge of
  that softness moving with the person makes by itself, its lag what the
  softness alone costs where the person moved.

Metrics, on the full-resolution alpha (see each function): IoU, DAVIS
boundary F, flicker (change where the ground truth did not change), lag
(error where the ground truth did change) and dropouts (a person lost while
the picture stood still; no ground truth needed, so it is also counted on
every video in ``clips/``). Every sequence is measured with both subjects
modes (``all``: everyone the engine finds; ``main``: the main subject only,
which is what the DAVIS ground truth marks) from one pass of the engine;
``rows`` holds one flat row per sequence, mode and method. ``--layout i420`` feeds
the engine and the recipes each frame as the I420 picture a browser sends
(the ground truth, dropouts and pictures stay on the BGR frames). Speed: median ms of the matte and
of the compositor per background mode at 1280x720. The last stdout line is
one JSON object; PNG plots go to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from bench import DATA, load_frames, report
from bench.data import load_davis
from live.config import EngineSettings, MatteSettings, SettingsError, Settings, parse_text
from live.frames import I420, Pyramid
from live.matte import Matte
from live.segment.auto_prompt import mask_iou
from live.segment.selfie import output_grid
from live.segment.tracks import PersonTracks
from live.subjects import SubjectSelector

REPO = Path(__file__).resolve().parent.parent
RECIPES = ("raw", "ema50", "obs", "live")  # post-processing of the engine's alpha
METHODS = RECIPES + ("model", "truth_soft")  # and the references, scored alike
TRUTH_SIGMA = 1.5  # px: about live's own edge (5-95 % over 2.4-5.5 px on DAVIS)
METRICS = ("iou", "boundary_f", "flicker", "lag", "dropouts")
SUBJECTS = ("all", "main")
FLAT_BGR = (64, 177, 0)  # green-screen colour: a halo or a ghost shows against it


# ---------------------------------------------------------------- metrics

def iou(alpha: np.ndarray, gt: np.ndarray) -> float:
    """IoU of ``alpha > 0.5`` and the boolean ground truth (1 when both are empty)."""
    return mask_iou(alpha > 0.5, gt)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Pixels that differ from their right, lower or lower-right neighbour (DAVIS seg2bmap)."""
    m = mask.astype(bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]
    b[:-1, :] |= m[:-1, :] != m[1:, :]
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return b


def boundary_f(alpha: np.ndarray, gt: np.ndarray, tolerance: float = 0.008) -> float:
    """DAVIS boundary F-measure: boundaries matched within ``tolerance`` x image diagonal."""
    radius = int(np.ceil(tolerance * np.hypot(*gt.shape)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    pred_b = boundary_map(alpha > 0.5)
    gt_b = boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    pred_near_gt = cv2.dilate(gt_b.view(np.uint8), disk).astype(bool)
    gt_near_pred = cv2.dilate(pred_b.view(np.uint8), disk).astype(bool)
    precision = np.count_nonzero(pred_b & pred_near_gt) / n_pred
    recall = np.count_nonzero(gt_b & gt_near_pred) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def flicker(alpha: np.ndarray, prev_alpha: np.ndarray, gt: np.ndarray,
            prev_gt: np.ndarray) -> float | None:
    """100 x mean |alpha_t - alpha_t-1| where the ground truth stayed the same.

    None when no pixel qualifies (the frame is left out of the mean).
    """
    same = gt == prev_gt
    if not same.any():
        return None
    return float(100.0 * np.abs(alpha[same] - prev_alpha[same]).mean())


def lag(alpha: np.ndarray, gt: np.ndarray, prev_gt: np.ndarray) -> float | None:
    """100 x mean |alpha_t - gt_t| where the ground truth changed since t-1.

    A matte that trails a moving edge (ghosting) scores high here. None when
    nothing moved (the frame is left out of the mean).
    """
    changed = gt != prev_gt
    if not changed.any():
        return None
    return float(100.0 * np.abs(alpha[changed] - gt[changed].astype(np.float32)).mean())


def sequence_metrics(alphas: Iterable[np.ndarray], gts: list[np.ndarray]) -> dict[str, list]:
    """Per-frame metric series for one method on one sequence (None = not defined)."""
    series: dict[str, list] = {m: [] for m in METRICS}
    prev_a = prev_g = None
    for a, g in zip(alphas, gts):
        series["iou"].append(iou(a, g))
        series["boundary_f"].append(boundary_f(a, g))
        if prev_a is None:
            series["flicker"].append(None)
            series["lag"].append(None)
        else:
            series["flicker"].append(flicker(a, prev_a, g, prev_g))
            series["lag"].append(lag(a, g, prev_g))
        prev_a, prev_g = a, g
    return series


def mean_defined(values: list) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def dropouts(alphas: Iterable[np.ndarray], frames: Iterable[np.ndarray]) -> int:
    """Frames on which a tracked person's mask fell under 30 % of its running median
    while the picture inside their box barely changed: a person the matte lost, not
    one who left. Needs no ground truth. It is the engine guard's own test
    (``PersonTracks.suspects``), applied to the final alpha on the engine's grid; a
    track that drops out is then forgotten, so a drop that lasts counts once."""
    tracks = PersonTracks()
    count = 0
    for alpha, frame in zip(alphas, frames):
        h, w = frame.shape[:2]
        grid = output_grid(w, h)
        small = cv2.resize(alpha, grid, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(cv2.resize(frame, grid, interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        count += bool(tracks.suspects(small, gray))
        tracks.update(small, gray, hold_frames=0)
    return count


# ---------------------------------------------------------------- methods

class Raw:
    """The engine's alpha, bilinearly upsampled: the baseline every recipe starts from."""

    def reset(self) -> None:
        pass

    def apply(self, alpha_low: np.ndarray, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        return np.clip(cv2.resize(alpha_low, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


class Ema50(Raw):
    """Linux-Fake-Background-Webcam: ``mask = 0.5 * new + 0.5 * previous``, then upsample."""

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None

    def reset(self) -> None:
        self.prev = None

    def apply(self, alpha_low: np.ndarray, frame: np.ndarray) -> np.ndarray:
        self.prev = alpha_low if self.prev is None else 0.5 * alpha_low + 0.5 * self.prev
        return super().apply(self.prev.astype(np.float32), frame)


class ObsRecipe:
    """The OBS background-removal plugin's CPU mask path, at its default settings.

    Read from locaal-ai/obs-backgroundremoval ``src/background-filter.cpp``
    (defaults: threshold 0.5, temporal_smooth_factor 0.85, contour_filter
    0.05, smooth_contour 0.5, feather 0):

    1. background mask = (alpha < threshold) as 0/255;
    2. ``addWeighted(new, f, last, 1 - f)`` with f = max(0.85, threshold):
       0.85 weight on the new mask; the blend is remembered for next frame;
    3. contour filter: background regions smaller than 5 % of the image are
       dropped (they become foreground). The plugin fills the *external*
       contours of the background, which also erases any subject that does
       not touch the frame border (e.g. a full-body dancer); we keep the
       evident intent (hole filling) rather than that side effect, so the
       comparison is not unfair to OBS on DAVIS;
    4. ``stackBlur`` with k = 3 + 11 * 0.5 -> 9 at model resolution, bilinear
       resize to the frame, re-threshold at 128 (a hard edge);
    5. feather 0 (off by default).

    The plugin's "skip frames whose PSNR to the previous is > 35 dB" shortcut
    is left out: it is a speed trick that only ever repeats a mask.
    """

    def __init__(self, threshold: float = 0.5, smooth: float = 0.85, contour: float = 0.05,
                 smooth_contour: float = 0.5) -> None:
        self.threshold, self.smooth = threshold, smooth
        self.contour, self.smooth_contour = contour, smooth_contour
        self.last: np.ndarray | None = None

    def reset(self) -> None:
        self.last = None

    def apply(self, alpha_low: np.ndarray, frame: np.ndarray) -> np.ndarray:
        bg = np.where(alpha_low < self.threshold, 255, 0).astype(np.uint8)
        if self.last is not None and self.last.shape == bg.shape:
            f = max(self.smooth, self.threshold)
            bg = cv2.addWeighted(bg, f, self.last, 1.0 - f, 0.0)
        self.last = bg.copy()
        if 0.0 < self.contour < 1.0:
            n, labels, stats, _ = cv2.connectedComponentsWithStats((bg > 0).view(np.uint8), 8)
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= bg.size * self.contour)
            bg = np.where((bg > 0) & ~np.isin(labels, small), 255, 0).astype(np.uint8)
        k = int(3 + 11 * self.smooth_contour)
        k += 1 - k % 2
        if self.smooth_contour > 0:
            bg = cv2.stackBlur(bg, (k, k))
        h, w = frame.shape[:2]
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.smooth_contour > 0:
            bg = np.where(bg > 128, 255, 0).astype(np.uint8)
        return (1.0 - bg.astype(np.float32) / 255.0).astype(np.float32)


class Live:
    """Our ``Matte`` at its default settings, or at ``settings`` (the alpha of what it gives)."""

    def __init__(self, settings: MatteSettings | None = None) -> None:
        self.matte = Matte(settings or MatteSettings())

    def reset(self) -> None:
        self.matte.reset()

    def apply(self, alpha_low: np.ndarray, frame: np.ndarray) -> np.ndarray:
        return self.matte.apply(alpha_low, frame).alpha


def make_methods(matte: MatteSettings | None = None) -> dict[str, Callable[[], object]]:
    return {"raw": Raw, "ema50": Ema50, "obs": ObsRecipe, "live": lambda: Live(matte)}


def matte_settings(pairs: list[str]) -> MatteSettings:
    """The matte's settings with ``name=value`` pairs applied, checked by the settings
    schema as the control panel's are (an unknown name or a value out of bounds is
    refused with the setting's name)."""
    hints = typing.get_type_hints(MatteSettings)
    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise SettingsError(f"--matte takes NAME=VALUE, got {pair!r}")
        if hints.get(name) is bool and text.lower() in ("true", "false"):
            values[name] = text.lower() == "true"
        else:
            values[name] = parse_text(hints[name], text) if name in hints else text
    return Settings().merged({"matte": values}).matte


def truth_soft(gt: np.ndarray, sigma: float = TRUTH_SIGMA) -> np.ndarray:
    """The ground truth feathered by a Gaussian of ``sigma`` px: a perfect soft matte.

    The flicker metric counts a soft edge that moves with the person: the
    pixels of its ramp that stay on one side of the truth's edge change. On
    slow sequences that alone reaches half the raw engine's flicker, so it
    says how far any soft matte can get below raw there.
    """
    return cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigma)


# ---------------------------------------------------------------- data

def find_sequences(data: Path, only: list[str] | None) -> list[Path]:
    seqs = sorted(p for p in data.glob("davis-*")
                  if (p / "frames").is_dir() and (p / "masks").is_dir())
    if only:
        wanted = {s if s.startswith("davis-") else f"davis-{s}" for s in only}
        missing = wanted - {p.name for p in seqs}
        if missing:
            raise SystemExit(f"sequences not found under {data}: {sorted(missing)}")
        seqs = [p for p in seqs if p.name in wanted]
    if not seqs:
        raise SystemExit(f"no davis-*/ folders with frames/ and masks/ under {data} "
                         "(set --data or LIVE_DATA_DIR)")
    return seqs


# ---------------------------------------------------------------- timing

def clip_frames(data: Path, n: int = 60) -> list[np.ndarray]:
    """``n`` successive 1280x720 frames: the webcam-like clip when present, else DAVIS."""
    frames = []
    clip = data / "clips" / "06_pingpong.mp4"
    if clip.is_file():
        cap = cv2.VideoCapture(str(clip))
        while len(frames) < n:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
    if not frames:  # no clip: DAVIS frames stretched to 720p cost the same
        paths = sorted(data.glob("davis-*/frames/*.jpg"))[:n]
        frames = [cv2.imread(str(p)) for p in paths]
    return [cv2.resize(f, (1280, 720)) if f.shape[:2] != (720, 1280) else f for f in frames]


def median_ms(fn: Callable[[int, object], object], n: int, warmup: int = 5,
              prepare: Callable[[int], object] = lambda i: None) -> float:
    """Median ms of ``fn(i, prepare(i))``; ``prepare`` runs outside the clock."""
    times = []
    for i in range(n + warmup):
        ready = prepare(i % n)
        t0 = time.perf_counter()
        fn(i % n, ready)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def stage_timings(data: Path, segmenter, tmp: Path, n_frames: int = 60,
                  settings: MatteSettings | None = None,
                  rounds: int = 3) -> dict[str, object]:
    """Median ms of the matte, of the compositor per background mode, and of both
    back to back as the pipeline runs them (the 3 ms budget), at 1280x720.

    Successive real frames and their real segmenter alphas, so the temporal
    filter and the video decoder see a stream, not one frame over and over.
    Each frame gets a fresh ``Pyramid`` that the segmenter has used (outside
    the clock), so the stages find what they find in the pipeline.
    """
    from live.composite import Compositor
    from live.config import BackgroundSettings

    frames = clip_frames(data, n_frames)
    segmenter.reset()
    lows = [segmenter.step(f) for f in frames]

    def segmented(i: int) -> Pyramid:
        pyramid = Pyramid(frames[i])
        segmenter.step(pyramid)
        return pyramid

    matte = Matte(settings or MatteSettings())
    alphas = [matte.apply(low, f).alpha for low, f in zip(lows, frames)]
    n = len(frames)
    image = tmp / "background.jpg"
    cv2.imwrite(str(image), cv2.resize(frames[n // 2], (1920, 1080)))
    modes = {"blur": BackgroundSettings(mode="blur"),
             "color": BackgroundSettings(mode="color"),
             "image": BackgroundSettings(mode="image", image=str(image)),
             "transparent": BackgroundSettings(mode="transparent")}
    video = data / "clips" / "05_default_juggle.mp4"
    if video.is_file():
        modes["video"] = BackgroundSettings(mode="video", video=str(video))
    matte_runs: list[float] = []
    comp_runs: dict[str, list[float]] = {m: [] for m in modes}
    both_runs: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):  # interleaved rounds: a burst of load on the machine hits all alike
        matte.reset()
        matte_runs.append(median_ms(lambda i, p: matte.apply(lows[i], p), n,
                                    prepare=segmented))
        for mode, settings in modes.items():
            comp = Compositor(settings)
            comp_runs[mode].append(median_ms(lambda i, p: comp.apply(p, alphas[i]), n,
                                             prepare=segmented))
            matte.reset()
            both_runs[mode].append(median_ms(
                lambda i, p: comp.apply(p, (m := matte.apply(lows[i], p)).alpha, m.boxes), n,
                prepare=segmented))
            comp.close()

    def med(runs: dict[str, list[float]]) -> dict[str, float]:
        return {m: round(float(np.median(v)), 3) for m, v in runs.items()}

    return {"matte_ms_p50": round(float(np.median(matte_runs)), 3),
            "composite_ms_p50": med(comp_runs), "matte_plus_composite_ms_p50": med(both_runs)}


# ---------------------------------------------------------------- plots

def composite_flat(frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (frame * a + np.array(FLAT_BGR, np.float32) * (1 - a)).astype(np.uint8)


def crop_box(gt: np.ndarray, pad: float = 0.15) -> tuple[int, int, int, int]:
    """A box around the subject (whole frame when the mask is empty)."""
    ys, xs = np.nonzero(gt)
    h, w = gt.shape
    if len(xs) == 0:
        return 0, 0, w, h
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    px, py = int((x1 - x0) * pad) + 8, int((y1 - y0) * pad) + 8
    return max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)


def side_by_side(frame: np.ndarray, gt: np.ndarray, alphas: dict[str, np.ndarray],
                 height: int = 240) -> np.ndarray:
    """input | GT | each method over a flat colour, cropped around the subject."""
    x0, y0, x1, y1 = crop_box(gt)
    tiles = [("input", frame), ("GT", composite_flat(frame, gt.astype(np.float32)))]
    tiles += [(name, composite_flat(frame, a)) for name, a in alphas.items()]
    out = []
    for name, img in tiles:
        tile = img[y0:y1, x0:x1]
        tw = max(1, round(tile.shape[1] * height / tile.shape[0]))
        tile = cv2.resize(tile, (tw, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3)
        cv2.putText(tile, name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        out.append(tile)
        out.append(np.full((height, 4, 3), 255, np.uint8))
    return np.hstack(out[:-1])


def plot_curves(out: Path, seq: str, series: dict[str, dict[str, list]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for method, s in series.items():
        axes[0].plot(s["iou"], label=method)
        axes[1].plot([np.nan if v is None else v for v in s["flicker"]], label=method)
    axes[0].set_ylabel("IoU")
    axes[1].set_ylabel("flicker (100 x mean |da|)")
    axes[1].set_xlabel("frame")
    axes[0].legend(loc="lower left")
    axes[0].set_title(seq)
    fig.tight_layout()
    fig.savefig(out / f"{seq}_curves.png", dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- main

def evaluate_sequence(seq: Path, segmenter, max_frames: int | None, out: Path | None,
                      n_examples: int = 3, layout: str = "bgr",
                      truth_sigma: float = TRUTH_SIGMA, matte: MatteSettings | None = None,
                      bare=None) -> dict[str, dict]:
    """{subjects mode: {method: {metric: mean over the frames}}} for one sequence.

    The engine runs once; each subjects mode then selects from the same alphas.
    ``bare``: the selfie model alone (``bare_model``), for the ``model`` reference."""
    clip = load_davis(seq, max_frames)
    frames, gts = clip.frames, clip.masks
    inputs = [I420.from_bgr(f) for f in frames] if layout == "i420" else frames
    segmenter.reset()
    engine_out = [segmenter.step(f) for f in inputs]
    bare_out = None
    if bare is not None:
        bare.reset()
        bare_out = [bare.step(f) for f in inputs]
    soft = [truth_soft(g, truth_sigma) for g in gts]
    result = {}
    for subjects in SUBJECTS:
        selector = SubjectSelector(subjects)  # the pipeline's step between segment and matte
        lows = [selector.apply(a) for a in engine_out]
        references = {"truth_soft": soft}
        if bare_out is not None:  # a selector of its own: it follows its input's people
            selector = SubjectSelector(subjects)
            references["model"] = [Raw().apply(selector.apply(a), f)
                                   for a, f in zip(bare_out, inputs)]
        result[subjects] = evaluate_methods(
            seq.name, frames, gts, lows, out if subjects == "all" else None, n_examples, inputs,
            matte, references)
    return result


def score(alphas: list[np.ndarray], gts: list[np.ndarray], frames: list[np.ndarray]
          ) -> tuple[dict[str, list], dict[str, float]]:
    """Per-frame series and their means (dropouts: a count) for one method."""
    series = sequence_metrics(alphas, gts)
    table = {m: mean_defined(series[m]) for m in METRICS if m != "dropouts"}
    table["dropouts"] = dropouts(alphas, frames)
    return series, table


def evaluate_methods(name: str, frames: list[np.ndarray], gts: list[np.ndarray],
                     lows: list[np.ndarray], out: Path | None, n_examples: int,
                     inputs: list | None = None, matte: MatteSettings | None = None,
                     references: dict[str, list[np.ndarray]] | None = None) -> dict:
    """Every recipe on the same low-resolution alphas, and the ``references`` (full-
    resolution alphas made otherwise), scored alike: {method: {metric: value}}.
    ``inputs``: the frames as the recipes get them (default ``frames``)."""
    example_at = set(np.linspace(len(frames) // 4, len(frames) - 1, n_examples).astype(int))
    series, outputs, table = {}, {}, {}
    for method_name, make in make_methods(matte).items():
        method = make()
        method.reset()
        outputs[method_name] = [method.apply(low, f) for low, f in zip(lows, inputs or frames)]
        series[method_name], table[method_name] = score(outputs[method_name], gts, frames)
    for ref_name, alphas in (references or {}).items():
        table[ref_name] = score(alphas, gts, frames)[1]
    if out is not None:
        plot_curves(out, name, series)
        for i in sorted(example_at):
            tile = side_by_side(frames[i], gts[i], {n: o[i] for n, o in outputs.items()})
            cv2.imwrite(str(out / f"{name}_{i:05d}_side_by_side.png"), tile)
    return table


def bare_model(segmenter):
    """The selfie model alone, on each whole frame (no crops, no hold): the ``model``
    reference. None for other engines."""
    from live.segment import create_segmenter
    from live.segment.selfie import SelfieSegmenter

    if not isinstance(segmenter, SelfieSegmenter):
        return None
    return create_segmenter(dataclasses.replace(segmenter.settings, selfie_crop=False,
                                                selfie_hold_frames=0))


def clip_dropouts(data: Path, segmenter, max_frames: int | None,
                  matte: MatteSettings | None = None) -> dict[str, dict]:
    """{clip: {subjects mode: {"raw": n, "live": n}}}: dropouts on the footage without
    ground truth (every video in clips/), for the engine's output and for live's matte."""
    clips = sorted(p for p in (data / "clips").glob("*") if p.suffix in (".mp4", ".webm", ".mkv"))
    result = {}
    for clip in clips:
        frames = load_frames(clip, max_frames)
        segmenter.reset()
        engine_out = [segmenter.step(f) for f in frames]
        result[clip.name] = {}
        for subjects in SUBJECTS:
            selector = SubjectSelector(subjects)
            lows = [selector.apply(a) for a in engine_out]
            live = Live(matte)
            result[clip.name][subjects] = {
                "raw": dropouts([Raw().apply(low, f) for low, f in zip(lows, frames)], frames),
                "live": dropouts([live.apply(low, f) for low, f in zip(lows, frames)], frames)}
        print(f"{clip.name}: dropouts {result[clip.name]}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Print the result as the last line (and return it)."""
    return report(lambda: measure(argv))


def measure(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder holding davis-*/ (default $LIVE_DATA_DIR or ../shared/data)")
    parser.add_argument("--engine", default="selfie", help="segmenter: selfie, sam2, ...")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality",
                        help="folder for PNG plots")
    parser.add_argument("--sequences", default=None,
                        help="comma-separated subset, e.g. hike,lucia (default: all)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per sequence")
    parser.add_argument("--subjects", choices=("all", "main"), default="all",
                        help="the subjects mode of the top-level 'sequences' and 'mean' (both "
                        "modes are measured and reported under 'by_subjects'; the selection "
                        "is applied before every method alike)")
    parser.add_argument("--timing-frames", type=int, default=60,
                        help="1280x720 frames in each speed measurement")
    parser.add_argument("--truth-sigma", type=float, default=TRUTH_SIGMA,
                        help="px of the Gaussian that feathers the ground truth into the "
                        "truth_soft reference")
    parser.add_argument("--matte", action="append", default=[], metavar="NAME=VALUE",
                        help="a matte setting for the live recipe (repeatable), e.g. "
                        "steady=0.5; the others keep their defaults")
    parser.add_argument("--layout", choices=("bgr", "i420"), default="bgr",
                        help="the frames as a camera or file gives them (bgr) or as a browser "
                        "peer's decoder does (i420)")
    args = parser.parse_args(argv)
    try:
        matte = matte_settings(args.matte)
    except SettingsError as exc:  # a typo on the command line: its message, no traceback
        raise SystemExit(f"--matte: {exc}") from None

    from live.segment import create_segmenter

    seqs = find_sequences(args.data, args.sequences.split(",") if args.sequences else None)
    args.out.mkdir(parents=True, exist_ok=True)
    segmenter = create_segmenter(EngineSettings(name=args.engine))
    bare = bare_model(segmenter)
    by_subjects: dict[str, dict] = {mode: {"sequences": {}} for mode in SUBJECTS}
    rows = []
    for seq in seqs:
        for mode, table in evaluate_sequence(seq, segmenter, args.max_frames, args.out,
                                             layout=args.layout,
                                             truth_sigma=args.truth_sigma,
                                             matte=matte, bare=bare).items():
            by_subjects[mode]["sequences"][seq.name] = table
            for method, r in table.items():
                rows.append({"sequence": seq.name, "subjects": mode, "method": method, **r})
            print(f"{seq.name} [{mode}]: " + "  ".join(
                f"{m} iou {r['iou']:.3f} bf {r['boundary_f']:.3f} fl {r['flicker']:.3f} "
                f"lag {r['lag']:.2f} drop {r['dropouts']}" for m, r in table.items()),
                file=sys.stderr)
    for mode, res in by_subjects.items():
        per_seq = res["sequences"]
        scored = [m for m in METHODS if m in next(iter(per_seq.values()))]  # no model: sam2
        res["mean"] = {method: {m: float(np.mean([per_seq[s][method][m] for s in per_seq]))
                                for m in METRICS} for method in scored}
        # flicker is to halve on every sequence, not only on the mean: against the
        # engine's output (what the matte stage alone does) and against the bare model
        res["live_flicker_vs_raw"] = {s: per_seq[s]["live"]["flicker"] / per_seq[s]["raw"]["flicker"]
                                      for s in per_seq}
        if bare is not None:  # against the bare model: what the user gains over it
            res["live_flicker_vs_model"] = {
                s: per_seq[s]["live"]["flicker"] / per_seq[s]["model"]["flicker"] for s in per_seq}
        # the same for a perfect soft matte: how low a soft edge can go on each sequence
        res["truth_soft_flicker_vs_raw"] = {
            s: per_seq[s]["truth_soft"]["flicker"] / per_seq[s]["raw"]["flicker"] for s in per_seq}
    primary = by_subjects[args.subjects]
    defaults = dataclasses.asdict(MatteSettings())
    result = {"engine": args.engine, "subjects": args.subjects, "layout": args.layout,
              "truth_sigma": args.truth_sigma,
              "matte": {n: v for n, v in dataclasses.asdict(matte).items()  # what --matte
                        if v != defaults[n]},  # changed
              "sequences": primary["sequences"], "mean": primary["mean"],
              "by_subjects": by_subjects, "rows": rows,
              "clips_dropouts": clip_dropouts(args.data, segmenter, args.max_frames, matte)}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(stage_timings(args.data, segmenter, Path(tmp), args.timing_frames, matte))
    return result


if __name__ == "__main__":
    main()
