"""Matte: shapes and ranges, temporal smoothing without ghosting, edge-aware feathering."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from live.config import MatteSettings, Settings, SettingsError
from live.frames import Pyramid
from live.matte import Matte

H, W = 360, 640  # full resolution
AH, AW = 72, 128  # model resolution (5x smaller)


def textured_frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, W, dtype=np.float32)[None, :, None]
    frame = base + rng.normal(0, 12, (H, W, 3))
    return np.clip(frame, 0, 255).astype(np.uint8)


def person_frame(x0: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright 'person' block on a dark textured background, and its low-res alpha."""
    frame = (textured_frame() * 0.3).astype(np.uint8)
    frame[60:320, x0:x0 + 160] = 220
    alpha = np.zeros((AH, AW), np.float32)
    alpha[12:64, x0 // 5:(x0 + 160) // 5] = 1.0
    return frame, alpha


def noisy_copies(alpha: np.ndarray, sigma: float, count: int, seed: int) -> list[np.ndarray]:
    """The model's mask of a still scene, as it wobbles from frame to frame."""
    rng = np.random.default_rng(seed)
    return [np.clip(alpha + rng.normal(0, sigma, alpha.shape), 0, 1).astype(np.float32)
            for _ in range(count)]


def flicker(outs: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(outs, outs[1:])]))


@pytest.mark.parametrize("settings", [MatteSettings(), MatteSettings(feather=0),
                                      MatteSettings(smoothing="ema"),
                                      MatteSettings(smoothing="off", feather=20)])
def test_shape_dtype_range(settings: MatteSettings) -> None:
    rng = np.random.default_rng(1)
    matte = Matte(settings)
    for i in range(3):
        out = matte.apply(rng.random((AH, AW), dtype=np.float32), textured_frame(i)).alpha
        assert out.shape == (H, W) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_each_call_returns_a_new_array() -> None:
    matte = Matte()
    frame, alpha = person_frame(200)
    first = matte.apply(alpha, frame).alpha
    kept = first.copy()
    matte.apply(np.zeros_like(alpha), frame)
    assert np.array_equal(first, kept)  # the caller's previous alpha is never overwritten


def test_smoothing_reduces_flicker_on_a_static_scene() -> None:
    frame, alpha = person_frame(200)
    noisy = noisy_copies(alpha, 0.12, 30, seed=2)
    results = {}
    for mode in ("off", "ema", "adaptive"):
        matte = Matte(MatteSettings(smoothing=mode))
        results[mode] = flicker([matte.apply(a, frame).alpha for a in noisy])
    assert results["ema"] < 0.7 * results["off"]
    assert results["adaptive"] < 0.5 * results["off"]
    assert results["adaptive"] < results["ema"]


def test_adaptive_follows_a_moving_subject_without_a_ghost() -> None:
    outs = {}
    for mode in ("ema", "adaptive"):
        matte = Matte(MatteSettings(smoothing=mode))
        for x0 in (100, 100, 100, 200):  # still, then a 100 px jump to the right
            frame, alpha = person_frame(x0)
            outs[mode] = matte.apply(alpha, frame).alpha
    row = 190
    vacated, arrived = slice(110, 190), slice(270, 350)
    assert outs["adaptive"][row, vacated].max() < 0.1  # no trail where the subject was
    assert outs["adaptive"][row, arrived].min() > 0.9  # already where it is now
    assert outs["ema"][row, vacated].mean() > 0.3  # the plain EMA leaves a ghost


@pytest.mark.parametrize("guide_size", [MatteSettings().guide_size, 2048])  # 2048: full res
def test_feathering_snaps_to_the_frames_hard_edge(guide_size: int) -> None:
    frame = np.full((H, W, 3), 30, np.uint8)
    frame[:, 320:] = 220  # a hard vertical edge at x = 320
    x = (np.arange(AW, dtype=np.float32) + 0.5) * 5
    alpha = np.clip((x - 320) / 40 + 0.5, 0, 1)[None, :].repeat(AH, 0)  # soft 40 px ramp
    steps, crossings = {}, {}
    for feather in (0, 8):
        settings = MatteSettings(feather=feather, guide_size=guide_size)
        out = Matte(settings).apply(alpha, frame).alpha[H // 2]
        steps[feather] = float(np.abs(np.diff(out)).max())
        crossings[feather] = int(np.argmax(out > 0.5))
    assert steps[0] < 0.1  # bilinear upsampling: a gentle ramp
    assert steps[8] > 0.4  # guided: a large part of the transition in one pixel, on the edge
    assert abs(crossings[8] - 320) <= 1


def test_feathering_keeps_a_soft_edge_where_the_frame_has_none() -> None:
    frame = np.full((H, W, 3), 128, np.uint8)  # flat: nothing to snap to
    alpha = np.zeros((AH, AW), np.float32)
    alpha[:, 64:] = 1.0
    out = Matte(MatteSettings(feather=8)).apply(alpha, frame).alpha[H // 2]
    assert np.count_nonzero((out > 0.05) & (out < 0.95)) >= 4


def test_reset_forgets_history() -> None:
    frame, alpha = person_frame(200)
    matte = Matte()
    for _ in range(5):
        matte.apply(np.zeros_like(alpha), frame)
    matte.reset()
    assert np.array_equal(matte.apply(alpha, frame).alpha, Matte().apply(alpha, frame).alpha)


def test_update_changes_parameters_and_keeps_history() -> None:
    frame, alpha = person_frame(200)
    matte = Matte(MatteSettings(smoothing="off"))
    matte.apply(np.zeros_like(alpha), frame)
    matte.update(MatteSettings(smoothing="ema", ema=0.5, feather=0))
    out = matte.apply(alpha, frame).alpha
    assert out[190, 280] == pytest.approx(0.5)  # half of the new mask: history was kept
    assert matte.settings.feather == 0


def test_bad_input_is_refused() -> None:
    matte = Matte()
    frame, alpha = person_frame(200)
    with pytest.raises(ValueError, match="2-D"):
        matte.apply(alpha[..., None], frame)
    with pytest.raises(ValueError, match="uint8"):
        matte.apply(alpha, frame.astype(np.float32))


def test_every_matte_setting_has_help_and_bounds() -> None:
    for f in dataclasses.fields(MatteSettings):
        assert f.metadata["help"]
        if f.type in ("int", "float"):
            assert f.metadata["lo"] is not None and f.metadata["hi"] is not None
    with pytest.raises(SettingsError, match="adaptive_motion"):
        Settings().merged({"matte": {"adaptive_motion": 2}})
    assert Settings().merged({"matte": {"guide_size": 480}}).matte.guide_size == 480
    with pytest.raises(SettingsError, match="adaptive_change_lo must be below"):
        Settings().merged({"matte": {"adaptive_change_lo": 0.6, "adaptive_change_hi": 0.5}})


def test_full_resolution_step_is_only_computed_around_the_person() -> None:
    import cv2

    from live.matte import apply_coefficients

    rng = np.random.default_rng(4)
    a = np.zeros((45, 80), np.float32)
    b = np.zeros((45, 80), np.float32)
    a[10:20, 30:50] = rng.normal(0, 0.01, (10, 20))
    b[12:30, 32:48] = rng.random((18, 16))
    gray = rng.integers(0, 256, (180, 320), dtype=np.uint8)
    whole = cv2.multiply(cv2.resize(a, (320, 180)), gray, dtype=cv2.CV_32F)
    whole = np.clip(whole + cv2.resize(b, (320, 180)), 0, 1)
    boxed = apply_coefficients(a, b, gray)
    assert np.array_equal(boxed, whole)
    assert not boxed[:, :100].any() and not boxed[:, 220:].any()  # far from the person: 0


@pytest.mark.parametrize("alpha_shape,frame_shape", [((256, 256), (1280, 720)),  # portrait
                                                     ((144, 256), (7, 5)),  # tiny frame
                                                     ((16, 16), (481, 853)),  # odd sizes
                                                     ((6, 6), (48, 48))])  # under the flow's patch
def test_any_alpha_and_frame_size(alpha_shape: tuple[int, int],
                                  frame_shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    matte = Matte()
    for _ in range(2):
        frame = rng.integers(0, 256, (*frame_shape, 3), dtype=np.uint8)
        out = matte.apply(rng.random(alpha_shape, dtype=np.float32), frame).alpha
        assert out.shape == frame_shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_a_lasting_change_on_a_still_picture_is_taken_after_a_few_frames() -> None:
    frame, alpha = person_frame(200)  # the picture never changes
    outs = {}
    for persist in (0, 4):
        matte = Matte(MatteSettings(adaptive_persist_frames=persist, adaptive_release=0.0))
        for _ in range(5):
            matte.apply(alpha, frame)
        for _ in range(5):  # the model now says: nobody there (it had been wrong)
            outs[persist] = matte.apply(np.zeros_like(alpha), frame).alpha
    assert outs[4].max() < 0.05  # believed after 4 frames of lasting disagreement
    assert outs[0][190, 280] > 0.3  # the motion gate alone would have frozen the error


def _bound(name: str, which: str) -> float:
    return next(f for f in dataclasses.fields(MatteSettings) if f.name == name).metadata[which]


@pytest.mark.parametrize("guide_size", [MatteSettings().guide_size, 2048])
def test_feather_at_its_maximum_keeps_the_person_opaque(data_dir, guide_size: int) -> None:
    import cv2

    frame = cv2.imread(str(data_dir / "davis-lucia" / "frames" / "00010.jpg"))
    gt = cv2.imread(str(data_dir / "davis-lucia" / "masks" / "00010.png"),
                    cv2.IMREAD_GRAYSCALE) > 127
    low = cv2.resize(gt.astype(np.float32), (256, 144), interpolation=cv2.INTER_AREA)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (41, 41))
    inside = cv2.erode(gt.view(np.uint8), disk).astype(bool)  # 20 px in from the edge
    outside = ~cv2.dilate(gt.view(np.uint8), disk).astype(bool)
    assert inside.sum() > 2000
    for feather in (MatteSettings().feather, _bound("feather", "hi")):
        out = Matte(MatteSettings(feather=feather, guide_size=guide_size)).apply(low, frame).alpha
        assert out[inside].min() > 0.95  # no green showing through the body
        assert out[outside].max() < 0.05  # nor a haze of the room around it


@pytest.mark.parametrize("guide_size", [MatteSettings().guide_size, 2048])
def test_feathering_moves_the_edge_no_further_than_one_model_pixel(guide_size: int) -> None:
    frame = np.full((H, W, 3), 200, np.uint8)
    frame[:, 330:] = 60  # a strong image edge (a door frame) 30 px beside the person's
    x = (np.arange(AW, dtype=np.float32) + 0.5) * 5
    alpha = np.clip((300 - x) / 40 + 0.5, 0, 1)[None, :].repeat(AH, 0)  # soft edge at 300
    for feather in (6, 16, _bound("feather", "hi")):
        settings = MatteSettings(feather=feather, guide_size=guide_size)
        out = Matte(settings).apply(alpha, frame).alpha[H // 2]
        assert abs(int(np.argmax(out < 0.5)) - 300) <= 5  # not dragged to the door frame
        assert out[320:].max() < 0.05


def test_feathering_a_flat_picture_leaves_a_narrow_soft_edge() -> None:
    frame = np.full((H, W, 3), 128, np.uint8)  # nothing to snap to: the filter is a box blur
    alpha = np.zeros((AH, AW), np.float32)
    alpha[:, 64:] = 1.0
    for feather in (6, 16, _bound("feather", "hi")):
        out = Matte(MatteSettings(feather=feather)).apply(alpha, frame).alpha[H // 2]
        assert np.count_nonzero((out > 0.05) & (out < 0.95)) <= 20  # no wide blurred fringe


def test_ema_at_its_minimum_still_follows_a_moved_mask() -> None:
    lowest = _bound("ema", "lo")
    assert lowest > 0
    with pytest.raises(SettingsError, match="matte.ema must be between"):
        Settings().merged({"matte": {"ema": 0.0}})
    with pytest.raises(SettingsError, match="adaptive_min_weight must be between"):
        Settings().merged({"matte": {"adaptive_min_weight": 0.0}})
    matte = Matte(Settings().merged({"matte": {"smoothing": "ema", "ema": lowest}}).matte)
    for _ in range(5):
        matte.apply(*reversed(person_frame(100)))
    for _ in range(30):  # a bit over a second at 24 fps
        out = matte.apply(*reversed(person_frame(300))).alpha
    row = 190
    assert out[row, 110:250].max() < 0.05  # the old place has emptied
    assert out[row, 310:450].min() > 0.95  # the new place is filled


def test_a_vacated_place_empties_even_where_the_picture_barely_changed() -> None:
    """An arm of the wall's own brightness moves away: the luminance gate stays shut, the
    release still lets the place empty at once (no semi-transparent ghost of the arm)."""
    frame = np.full((H, W, 3), 150, np.uint8)

    def arm_at(x0: int) -> tuple[np.ndarray, np.ndarray]:
        f = frame.copy()
        f[60:320, x0:x0 + 160] = (200, 150, 132)  # BGR: another colour, the same grey level
        alpha = np.zeros((AH, AW), np.float32)
        alpha[12:64, x0 // 5:(x0 + 160) // 5] = 1.0
        return alpha, f

    outs = {}
    for release in (0.0, MatteSettings().adaptive_release):
        matte = Matte(MatteSettings(adaptive_release=release))
        for _ in range(5):
            matte.apply(*arm_at(100))
        for _ in range(2):
            outs[release] = matte.apply(*arm_at(400)).alpha
    vacated = (190, slice(110, 250))
    assert outs[MatteSettings().adaptive_release][vacated].max() < 0.05
    assert outs[0.0][vacated].min() > 0.5  # symmetric smoothing: a ghost of the arm


def test_history_decays_to_exactly_zero() -> None:
    """No endless tail of ever tinier values: arithmetic on denormal floats (which the
    selfie model emits, and a decay would keep producing) is ~100x slower on x86."""
    frame, alpha = person_frame(200)
    tiny = np.full_like(alpha, 1e-39)  # a denormal
    matte = Matte(MatteSettings(smoothing="ema", ema=0.5))
    matte.apply(alpha, frame)
    for _ in range(30):
        out = matte.apply(tiny, frame).alpha
    assert matte.temporal.state.max() == 0.0
    assert out.max() == 0.0
    assert tiny[0, 0] == np.float32(1e-39)  # the caller's array is left alone


def _textured_walker(x0: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured person on a textured background, and the model's soft-edged alpha
    (edges 3 cells wide, as the selfie model's are)."""
    rng = np.random.default_rng(7)
    background = np.clip(np.linspace(40, 120, W)[None, :, None]
                         + rng.normal(0, 20, (H, W, 3)), 0, 255).astype(np.uint8)
    person = np.clip(rng.normal(190, 30, (260, 160, 3)), 0, 255).astype(np.uint8)
    frame = cv2.GaussianBlur(background, (5, 5), 0)
    frame[60:320, x0:x0 + 160] = cv2.GaussianBlur(person, (5, 5), 0)
    centres = (np.arange(AW) + 0.5) * 5
    alpha = np.zeros((AH, AW), np.float32)
    alpha[12:64] = np.clip(np.minimum(centres - x0, x0 + 160 - centres) / 15 + 0.5, 0, 1)
    return frame, alpha


@pytest.mark.parametrize("speed", [3, 5])  # px per frame: under a model cell (5 px)
def test_motion_compensation_removes_the_lag_of_a_slow_moving_edge(speed: int) -> None:
    """A slow edge changes the mask by less than ``adaptive_change_hi`` a frame, so the
    filter smooths it; without compensation that blends it with where it was (lag).
    Measured on the smoothed mask itself, where the edge moved this frame."""
    errors = {}
    for compensate in (False, True):
        matte = Matte(MatteSettings(motion_compensation=compensate))
        noise = np.random.default_rng(1)
        errs = []
        previous = None
        for i in range(14):
            frame, alpha = _textured_walker(100 + speed * i)
            noisy = np.clip(alpha + noise.normal(0, 0.05, alpha.shape), 0, 1)
            matte.apply(noisy.astype(np.float32), frame)
            if previous is not None and i > 2:
                moved = np.abs(alpha - previous) > 0.02
                errs.append(np.abs(matte.temporal.state - alpha)[moved].mean())
            previous = alpha
        errors[compensate] = float(np.mean(errs))
    # measured (deterministic): 0.168 -> 0.049 at 3 px, 0.183 -> 0.044 at 5 px
    assert errors[True] < 0.5 * errors[False]


def test_motion_compensation_runs_on_the_selfie_grid_only() -> None:
    """SAM 2's alpha is 512 or 1024 cells a side: a flow and a move there would cost
    3-11 ms a frame, so its matte smooths without them."""
    frame, _ = _textured_walker(100)
    for shape, flows in (((144, 256), True), ((512, 512), False)):
        matte = Matte()
        rng = np.random.default_rng(2)
        for _ in range(3):
            matte.apply(rng.random(shape, dtype=np.float32), frame)
        assert (matte.temporal._flow is not None) == flows, shape


def test_steady_take_holds_wobble_passes_motion_and_makes_no_steps() -> None:
    """The weight grows smoothly with the change: no threshold where neighbouring
    pixels that changed almost alike end up far apart (a hard hold drew contour lines)."""
    from live.matte import STEADY_MIN, steady_take
    threshold = MatteSettings().steady
    old = np.full((1, 401), 0.5, np.float32)
    change = np.linspace(-0.5, 0.5, 401, dtype=np.float32)[None, :]
    new = old + change
    steady_take(new, old, threshold)
    moved = (new - old)[0]
    change = change[0]
    wobble = np.abs(change) <= 0.05
    most = (STEADY_MIN + (0.05 / threshold) ** 4) * 0.05
    assert np.abs(moved[wobble]).max() <= most + 1e-6  # barely moves (~0.001)
    motion = np.abs(change) >= threshold
    assert np.allclose(moved[motion], change[motion], atol=1e-6)  # taken whole
    steps = np.diff(moved)
    assert steps.min() >= 0  # monotonic: a bigger change never moves less
    # (w * change)' = 5 (change / threshold)^4 + STEADY_MIN <= 5.02 below the
    # threshold, 1 above
    assert steps.max() <= (5 + STEADY_MIN) * (change[1] - change[0]) + 1e-6


def test_steady_edges_lower_the_flicker_of_a_wobbling_edge_and_keep_the_body_filled() -> None:
    frame, alpha = _textured_walker(200)
    noisy = noisy_copies(alpha, 0.05, 20, seed=3)
    results = {}
    for steady in (0.0, MatteSettings().steady):
        matte = Matte(MatteSettings(steady=steady))
        outs = [matte.apply(a, frame).alpha for a in noisy]
        results[steady] = flicker(outs[5:])
        for out in outs:
            assert out[100:280, 230:330].min() == 1.0  # inside the person: opaque at once
            assert out[:, :150].max() == 0.0  # far outside: nothing
    # measured (deterministic): 2.4e-4 without, 2.4e-5 with
    assert results[MatteSettings().steady] < 0.3 * results[0.0], results


def test_steady_edges_leave_no_streaks_behind_a_moving_person() -> None:
    """Held back everywhere, a moving edge left a trail of alpha 0.8-0.9 inside the
    body that took a second to fill in: steady edges only hold the band where the
    edge may move, so a frame's inside is opaque and its far outside empty at once."""
    matte = Matte()
    for i in range(12):
        x0 = 100 + 12 * i  # more than two model pixels a frame
        frame, alpha = _textured_walker(x0)
        out = matte.apply(alpha, frame).alpha
        inside = out[100:280, x0 + 30:x0 + 130]
        assert inside.min() == 1.0, (i, float(inside.min()))
        assert out[:, :max(0, x0 - 30)].max() == 0.0, i  # where it was: empty


def test_guide_memory_lowers_the_lag_of_a_moving_edge() -> None:
    """The filter fits its edges on a picture averaged like the smoothed mask, then
    applies them to the current frame: the edge lands where the picture has it now.
    Measured on the full-resolution alpha, where the person's true edge moved."""
    errors = {}
    for memory in (0, MatteSettings().guide_memory):
        matte = Matte(MatteSettings(guide_memory=memory, steady=0.0))
        noise = np.random.default_rng(1)
        errs = []
        truth_before = None
        for i in range(14):
            x0 = 100 + 5 * i
            frame, alpha = _textured_walker(x0)
            noisy = np.clip(alpha + noise.normal(0, 0.05, alpha.shape), 0, 1)
            out = matte.apply(noisy.astype(np.float32), frame).alpha
            truth = np.zeros((H, W), np.float32)
            truth[60:320, x0:x0 + 160] = 1.0
            if truth_before is not None and i > 2:
                moved = truth != truth_before
                errs.append(np.abs(out - truth)[moved].mean())
            truth_before = truth
        errors[memory] = float(np.mean(errs))
    # measured (deterministic): 0.110 fitted on the current frame, 0.031 with the memory
    assert errors[MatteSettings().guide_memory] < 0.5 * errors[0], errors


def test_guide_memory_stays_near_the_current_picture() -> None:
    """A change of the light: the fitting picture is at once within ``guide_memory``
    grey levels of the new one, and catches up with it in a few frames."""
    frame, alpha = person_frame(200)
    matte = Matte()
    bound = MatteSettings().guide_memory / 255.0
    for _ in range(10):
        matte.apply(alpha, frame)
    brighter = cv2.add(frame, np.full_like(frame, 80))
    gaps = []
    for _ in range(30):
        matte.apply(alpha, brighter)
        guide = Pyramid.of(brighter).gray(*matte._fit_guide.shape[::-1])  # the matte's own
        gaps.append(float(np.abs(matte._fit_guide * 255.0 - guide).max()))
    assert gaps[0] <= bound * 255.0 + 1e-3
    assert gaps[-1] <= 0.5
