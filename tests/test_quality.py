"""bench.quality: the metrics on masks with known answers, and a short real run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from bench.quality import (METHODS, METRICS, SUBJECTS, ObsRecipe, bare_model, boundary_f,
                           dropouts, evaluate_sequence, flicker, iou, lag, main, matte_settings,
                           truth_soft)
from live.config import EngineSettings, MatteSettings, SettingsError
from live.segment import create_segmenter
from utils import run_bench


def square(h: int = 100, w: int = 100, y0: int = 20, x0: int = 20, size: int = 40) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_iou_known_overlap() -> None:
    a = square(x0=20).astype(np.float32)
    b = square(x0=40)  # 40x40 squares shifted by 20: overlap 800, union 2400
    assert iou(a, b) == pytest.approx(800 / 2400)
    assert iou(np.zeros((10, 10), np.float32), np.zeros((10, 10), bool)) == 1.0
    assert iou(b.astype(np.float32) * 0.4, b) == 0.0  # 0.4 is below the 0.5 threshold


def test_boundary_f_tolerance() -> None:
    gt = square()
    diag_tol = int(np.ceil(0.008 * np.hypot(100, 100)))  # 2 px on a 100x100 image
    assert boundary_f(gt.astype(np.float32), gt) == 1.0
    near = square(x0=20 + diag_tol)  # within tolerance everywhere
    assert boundary_f(near.astype(np.float32), gt) == 1.0
    far = square(y0=70, x0=70, size=20)  # boundaries never within 2 px of each other
    assert boundary_f(far.astype(np.float32), gt) == 0.0
    assert boundary_f(np.zeros((100, 100), np.float32), gt) == 0.0
    assert boundary_f(np.zeros((100, 100), np.float32), np.zeros((100, 100), bool)) == 1.0


def test_boundary_f_half_matched() -> None:
    gt = square(size=40)
    # prediction = GT plus a far-away extra square: recall 1, precision ~ 1/2
    pred = gt | square(y0=70, x0=70, size=20)
    f = boundary_f(pred.astype(np.float32), gt)
    assert 0.5 < f < 0.9


def test_flicker_counts_only_unchanged_ground_truth() -> None:
    gt0 = square()
    gt1 = square(x0=30)  # GT moved: columns 20..29 and 60..69 changed
    a0 = np.zeros((100, 100), np.float32)
    a1 = np.zeros((100, 100), np.float32)
    a1[0:10, :] = 0.5  # a change where GT did not change: 1000 px of 0.5
    a1[30:40, 20:30] = 1.0  # a change where GT did change: ignored
    same = np.count_nonzero(gt0 == gt1)
    assert flicker(a1, a0, gt1, gt0) == pytest.approx(100 * 1000 * 0.5 / same)
    assert flicker(a0, a0, gt0, gt0) == 0.0
    assert flicker(a0, a1, gt0, ~gt0) is None


def test_lag_measures_error_where_ground_truth_moved() -> None:
    gt0, gt1 = square(), square(x0=30)
    changed = gt0 != gt1
    perfect = gt1.astype(np.float32)
    ghost = gt0.astype(np.float32)  # still showing last frame's mask
    assert lag(perfect, gt1, gt0) == 0.0
    assert lag(ghost, gt1, gt0) == pytest.approx(100.0)
    half = np.where(changed, 0.5, perfect).astype(np.float32)
    assert lag(half, gt1, gt0) == pytest.approx(50.0)
    assert lag(perfect, gt0, gt0) is None


def test_a_soft_edge_moving_with_the_truth_counts_as_flicker() -> None:
    """The truth_soft reference: a perfect matte with a soft edge still 'flickers'
    where its ramp moves over pixels that stay on one side of the edge, the more
    so the softer it is; standing still it does not."""
    gt0, gt1 = square(x0=20), square(x0=22)  # moved 2 px
    assert flicker(gt1.astype(np.float32), gt0.astype(np.float32), gt1, gt0) == 0.0
    still = flicker(truth_soft(gt0, 1.5), truth_soft(gt0, 1.5), gt0, gt0)
    assert still == 0.0
    moving = [flicker(truth_soft(gt1, s), truth_soft(gt0, s), gt1, gt0) for s in (0.7, 1.5, 3.0)]
    assert 0.0 < moving[0] < moving[1] < moving[2]
    assert iou(truth_soft(gt0, 1.5), gt0) > 0.99  # the edge stays where it is (not the corners)


def person(x0: int, visible: float = 1.0) -> np.ndarray:
    """A 144x256 alpha: a 60x120 person at ``x0`` (a 40 % share when ``visible`` < 1)."""
    a = np.zeros((144, 256), np.float32)
    a[10:130, x0:x0 + 60] = visible
    return a


def room(x0: int | None) -> np.ndarray:
    """A still textured picture; a bright block where the person stands."""
    rng = np.random.default_rng(3)
    frame = rng.integers(40, 120, (144, 256, 3), dtype=np.uint8)
    if x0 is not None:
        frame[10:130, x0:x0 + 60] = 230
    return frame


def test_dropouts_count_a_person_lost_on_a_still_picture_not_one_who_leaves() -> None:
    still = [room(100)] * 20
    lost = [person(100)] * 10 + [np.zeros((144, 256), np.float32)] + [person(100)] * 9
    assert dropouts(lost, still) == 1
    assert dropouts([person(100)] * 20, still) == 0
    # the person walks out: the picture changes where they were, so it is no dropout
    left = [person(100)] * 10 + [np.zeros((144, 256), np.float32)] * 10
    assert dropouts(left, [room(100)] * 10 + [room(None)] * 10) == 0


def test_obs_recipe_is_a_hard_mask_with_holes_filled() -> None:
    alpha = np.zeros((72, 128), np.float32)
    alpha[10:60, 30:90] = 0.9
    alpha[30:33, 50:53] = 0.0  # a tiny hole in the subject
    frame = np.zeros((144, 256, 3), np.uint8)
    out = ObsRecipe().apply(alpha, frame)
    assert out.shape == (144, 256) and set(np.unique(out)) <= {0.0, 1.0}
    assert out[63, 103] == 1.0  # the hole is filled (a background region < 5 % of the image)
    assert out[5, 5] == 0.0 and out[70, 120] == 1.0


def test_benchmark_json_has_every_key(data_dir, tmp_path, capsys) -> None:
    result = main(["--data", str(data_dir), "--sequences", "hike", "--max-frames", "4",
                   "--out", str(tmp_path), "--timing-frames", "8"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    held = main(["--data", str(data_dir), "--sequences", "hike", "--max-frames", "4",
                 "--out", str(tmp_path / "held"), "--timing-frames", "8",
                 "--matte", "smoothing=off"])
    assert held["matte"] == {"smoothing": "off"} and result["matte"] == {}
    # only the live recipe changes, and it does
    assert held["mean"]["raw"] == result["mean"]["raw"]
    assert held["mean"]["live"]["flicker"] != result["mean"]["live"]["flicker"]
    assert result["engine"] == "selfie"
    assert set(result["sequences"]) == {"davis-hike"}
    assert set(result["by_subjects"]) == set(SUBJECTS)
    assert result["by_subjects"]["all"]["mean"] == result["mean"]
    tables = [result["sequences"]["davis-hike"], result["mean"]]
    tables += [result["by_subjects"][m]["sequences"]["davis-hike"] for m in SUBJECTS]
    for table in tables:
        assert set(table) == set(METHODS)
        for method in METHODS:
            assert set(table[method]) == set(METRICS)
            assert all(np.isfinite(v) for v in table[method].values())
    assert len(result["rows"]) == len(SUBJECTS) * len(METHODS)
    assert {"sequence", "subjects", "method", *METRICS} == set(result["rows"][0])
    clips = sorted(p.name for p in (data_dir / "clips").glob("*.mp4"))
    assert sorted(result["clips_dropouts"]) == clips
    for per_mode in result["clips_dropouts"].values():
        assert set(per_mode) == set(SUBJECTS)
        assert all(isinstance(n, int) and n >= 0 for m in per_mode.values() for n in m.values())
    assert 0.3 < result["mean"]["live"]["iou"] <= 1.0
    assert result["mean"]["truth_soft"]["iou"] > 0.95 and result["truth_sigma"] > 0
    for mode in SUBJECTS:
        ratios = result["by_subjects"][mode]
        assert set(ratios["live_flicker_vs_raw"]) == {"davis-hike"}
        assert 0 < ratios["truth_soft_flicker_vs_raw"]["davis-hike"] < 1
        assert ratios["live_flicker_vs_model"]["davis-hike"] > 0
    # the bare model is no cropping engine: on the hiker, small in the frame, it finds less
    assert result["mean"]["model"]["iou"] < result["mean"]["raw"]["iou"]
    assert result["matte_ms_p50"] > 0
    assert {"blur", "color", "image", "transparent"} <= set(result["composite_ms_p50"])
    assert all(v > 0 for v in result["matte_plus_composite_ms_p50"].values())
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert "davis-hike_curves.png" in pngs
    assert any(name.endswith("side_by_side.png") for name in pngs)


def test_live_halves_the_bare_models_flicker_on_a_davis_sequence(data_dir) -> None:
    """Issue 10's per-sequence target, against its "raw selfie model" (bench.quality's
    ``model`` row), on the first 30 frames of lucia: measured 0.43 (0.45 over the
    whole sequence). 0.6 leaves room for another machine's rounding, not for a
    matte that stopped smoothing: with ``smoothing=off`` it reads 0.68 (checked)."""
    segmenter = create_segmenter(EngineSettings(name="selfie"))
    result = evaluate_sequence(data_dir / "davis-lucia", segmenter, 30, None,
                               bare=bare_model(segmenter))["all"]
    live, model = result["live"], result["model"]
    assert live["flicker"] < 0.6 * model["flicker"]
    assert live["iou"] > model["iou"] and live["lag"] < model["lag"]  # nothing given back


def test_matte_settings_from_the_command_line_go_through_the_schema() -> None:
    settings = matte_settings(["steady=0.5", "adaptive_persist_frames=12",
                               "motion_compensation=false", "smoothing=ema"])
    assert (settings.steady, settings.adaptive_persist_frames) == (0.5, 12)
    assert settings.motion_compensation is False and settings.smoothing == "ema"
    assert settings.feather == MatteSettings().feather  # the rest keep their defaults
    for bad, why in (("steady=2", "between"), ("stedy=0.5", "unknown setting"),
                     ("steady", "NAME=VALUE"), ("feather=big", "number")):
        with pytest.raises(SettingsError, match=why):
            matte_settings([bad])


def test_a_failing_benchmark_still_ends_with_a_json_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "no davis-*/ folders" in last["error"]


def test_the_rvm_reference_is_never_run_in_lives_environment(tmp_path) -> None:
    """RVM (GPL-3.0) is measured in an environment of its own: here the script ends at
    once, with a message that says so, and still a JSON last line."""
    model = tmp_path / "rvm.onnx"
    model.write_bytes(b"not a model")
    status, result, _ = run_bench("bench.rvm_reference", "--model", str(model),
                                  "--data", str(tmp_path), timeout=120)
    assert status == 1
    error = result["error"]
    if importlib.util.find_spec("onnxruntime") is None:  # live never installs it
        assert "environment of its own" in error
    else:
        assert error  # no davis-* folders here, or a file that is no model
