"""bench.encoders: the video sent back, setting by setting, through aiortc's real
encoders and real decoders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bench import ssim
from bench.encoders import SETTINGS
from utils import run_bench


def test_ssim_is_one_for_the_same_picture_and_falls_with_blur_and_blocks() -> None:
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (120, 160), np.uint8), (5, 5), 1.0)
    assert ssim(picture, picture) == 1.0
    blurred = cv2.GaussianBlur(picture, (9, 9), 3.0)
    blocky = cv2.resize(cv2.resize(picture, (20, 15), interpolation=cv2.INTER_AREA),
                        (160, 120), interpolation=cv2.INTER_NEAREST)
    assert 0.0 < ssim(picture, blocky) < ssim(picture, blurred) < 0.95


def test_every_setting_is_measured_on_the_same_pictures_and_deblocking_shows(
        clip_path: Path) -> None:
    status, result, stderr = run_bench("bench.encoders", "--clip", str(clip_path),
                                       "--size", "640x360", "--frames", "30",
                                       "--settings", "vp8,h264,h264-ultrafast", timeout=240)
    assert status == 0, stderr
    assert result["size"] == "640x360" and result["frames"] == 30
    assert set(result["settings"]) == {"vp8", "h264", "h264-ultrafast"} <= set(SETTINGS)
    for name, figures in result["settings"].items():
        assert figures["cpu_ms_p50"] > 0 and figures["sent_kbps"] > 100, (name, figures)
        assert 35 < figures["psnr_y_db"] < 70 and 0.95 < figures["ssim_y"] < 1.0, (name, figures)
    # the server's x264 is ultrafast with its deblocking filter put back: the same
    # bits give a picture closer to what was sent than ultrafast as it comes
    ours, plain = result["settings"]["h264"], result["settings"]["h264-ultrafast"]
    assert abs(ours["sent_kbps"] - plain["sent_kbps"]) < 0.1 * plain["sent_kbps"]
    assert ours["ssim_y"] > plain["ssim_y"] and ours["psnr_y_db"] > plain["psnr_y_db"]


def test_an_unknown_setting_is_named_in_the_error(clip_path: Path) -> None:
    status, result, _ = run_bench("bench.encoders", "--clip", str(clip_path),
                                  "--settings", "h264,av1-magic", timeout=120)
    assert status == 1 and "av1-magic" in result["error"]
