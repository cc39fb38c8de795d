"""bench.browser's picture comparison: what came back from the pass-through server
against what the page's preview showed, frame by frame, in a real chromium."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bench.browser import BITS, CHROMIUM, picture_figures
from utils import run_bench


def shot(plane: np.ndarray) -> list:
    """A plane as ``PICTURE_JS`` hands it over: [w, h, base64]."""
    return [plane.shape[1], plane.shape[0], base64.b64encode(plane.tobytes()).decode()]


def test_the_stamp_rows_are_left_out_and_losses_are_scored() -> None:
    rng = np.random.default_rng(1)
    sent = rng.integers(40, 216, (180, 320), np.uint8)
    block = 320 // BITS  # the stamp's rows: one block tall at the top and the bottom
    restamped = sent.copy()
    restamped[:block] = 255 - restamped[:block]
    restamped[-block:] = 0
    noisy = np.clip(sent + rng.normal(0, 4, sent.shape), 0, 255).astype(np.uint8)
    figures = picture_figures([[shot(sent), shot(restamped)], [shot(sent), shot(noisy)],
                               [shot(sent), shot(sent[::2, ::2].copy())]])
    assert figures["frames"] == 2  # the frame that came back smaller is not compared
    same, lossy = figures["psnr_y_db"]
    assert same > 80  # only the stamp rows differed
    assert 35 < lossy < 37.5  # noise of sigma 4: 20 log10(255 / 4) = 36.1 dB
    assert figures["ssim_y_min"] < figures["ssim_y_median"] <= 1.0
    assert picture_figures([]) == {"frames": 0}


@pytest.mark.browser
def test_frames_coming_back_are_compared_with_the_preview(clip_path: Path, tmp_path: Path
                                                          ) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright (Python) is not installed (pip install playwright)")
    status, result, stderr = run_bench(
        "bench.browser", "--clip", str(clip_path), "--size", "640x360", "--duration", "8",
        "--warmup", "2", "--loop-frames", "60", "--picture", "4",
        "--screenshot", str(tmp_path / "page.png"),
        timeout=300)
    assert status == 0, stderr[-2000:]
    picture = result["passthrough_picture"]
    assert picture["frames"] >= 2, picture
    # two trips through VP8 at the server's bitrates keep a 640x360 picture well
    # above 30 dB; paired with another frame of this clip one reads 19-27 dB (the
    # median: a single frame can come back damaged on a loaded machine)
    assert picture["psnr_y_db_median"] > 30 and picture["ssim_y_median"] > 0.9, picture
    assert "picture" not in result  # the processed video is not the preview's picture


def test_a_picture_count_the_loop_cannot_hold_is_named_in_the_error() -> None:
    status, result, _ = run_bench("bench.browser", "--loop-frames", "60", "--picture", "31",
                                  timeout=120)
    assert status == 1 and "--picture must be between 0 and 30" in result["error"], result
