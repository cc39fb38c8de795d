"""The selfie models as the engine runs them (``prepared``): at their own size, the
model files' outputs bit for bit with the last upsampling moved into XNNPACK; the
same person through the square model's narrow input; and crops that pick it only
when a standing person fits it whole."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.data import load_davis
from bench.quality import iou
from live.checkpoints import selfie_model_path
from live.segment import selfie
from live.segment.model_shapes import prepared
from live.segment.selfie import plan_crop

# Measured on 2026-11-30 over the 70 frames of davis-lucia, a crop of 5:8 around the
# walking woman (her box and a margin): against the ground truth, mean IoU 0.891 through
# the 160x256 input and 0.893 for the square model shown the same crop widened to 1:1
# (the same scale); worst frames 0.799 and 0.799. (On hike 0.881 / 0.891, parkour
# 0.860 / 0.856.) A wrong rewrite reads far less, or fails to load (the first draft,
# which also shrank the float16 weights' shapes, agreed with the square model at IoU
# 0.06 on a lucia frame).
NARROW_FLOOR = 0.85
NARROW_BEHIND_SQUARE = 0.02


def run(model: bytes, image_bgr: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    h, w = inp["shape"][1:3]
    assert image_bgr.shape[:2] == (h, w)
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    interp.set_tensor(inp["index"], rgb[None])
    interp.invoke()
    return interp.get_tensor(out["index"])[0, :, :, 0].copy()


def op_kinds(model: bytes) -> set[str]:
    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items()}
    parsed = schema.Model.GetRootAsModel(model, 0)
    codes = [parsed.OperatorCodes(i) for i in range(parsed.OperatorCodesLength())]
    graph = parsed.Subgraphs(0)
    kinds = set()
    for i in range(graph.OperatorsLength()):
        code = codes[graph.Operators(i).OpcodeIndex()]
        kinds.add(code.CustomCode().decode() if code.CustomCode()
                  else names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return kinds


@pytest.mark.parametrize("variant", ["square", "landscape"])
def test_the_model_at_its_own_size_is_the_model_file_bit_for_bit(
        variant: str, data_dir: Path) -> None:
    """The upsampling rewritten gives the very same floats: on noise, and on a real
    frame (a kernel applied mirrored, or its phases laid out in the wrong order,
    moves the person's edge by a pixel and shows here)."""
    path = selfie_model_path(variant)
    w, h = selfie.MODEL_SIZE[variant]
    images = [np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)]
    folder = data_dir / "davis-lucia"
    if folder.is_dir():
        images.append(cv2.resize(load_davis(folder).frames[20], (w, h),
                                 interpolation=cv2.INTER_AREA))
    model = prepared(path, w, h)
    assert "Convolution2DTransposeBias" in op_kinds(path.read_bytes())
    assert "Convolution2DTransposeBias" not in op_kinds(model)
    assert {"CONV_2D", "DEPTH_TO_SPACE"} <= op_kinds(model)
    for image in images:
        ours, theirs = run(model, image), run(path.read_bytes(), image)
        np.testing.assert_array_equal(ours, theirs)
    if len(images) > 1:  # the real frame: the woman found, some of the picture, not all
        assert 0.05 < float((theirs > 0.5).mean()) < 0.5


def test_a_size_the_feature_maps_cannot_take_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        prepared(selfie_model_path("square"), 150, 256)


def test_the_narrow_input_finds_a_standing_person_as_the_square_one_does(
        data_dir: Path) -> None:
    folder = data_dir / "davis-lucia"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing from the evaluation data")
    clip = load_davis(folder)
    path = selfie_model_path("square")
    narrow, square = prepared(path, 160, 256), path.read_bytes()
    scores: dict[str, list[float]] = {"narrow": [], "square": []}
    for frame, truth in zip(clip.frames, clip.masks):
        ys, xs = np.nonzero(truth)
        h = int(1.2 * (ys.max() - ys.min()))  # the person and a margin, 5:8
        w = int(h * 160 / 256)
        # padded by h on every side, so crops near the edge stay whole
        frame = cv2.copyMakeBorder(frame, h, h, h, h, cv2.BORDER_REPLICATE)
        truth = cv2.copyMakeBorder(truth.astype(np.uint8), h, h, h, h, cv2.BORDER_CONSTANT)
        y0 = (ys.max() + ys.min()) // 2 - h // 2 + h
        x0 = (xs.max() + xs.min()) // 2 - w // 2 + h
        wide_x0 = x0 + w // 2 - h // 2  # the square crop around the narrow one
        truth = truth[y0:y0 + h, x0:x0 + w] > 0
        crop = cv2.resize(frame[y0:y0 + h, x0:x0 + w], (160, 256), interpolation=cv2.INTER_AREA)
        wide = cv2.resize(frame[y0:y0 + h, wide_x0:wide_x0 + h], (256, 256),
                          interpolation=cv2.INTER_AREA)
        scores["narrow"].append(iou(cv2.resize(run(narrow, crop), (w, h)), truth))
        seen = cv2.resize(run(square, wide), (h, h))[:, x0 - wide_x0:x0 - wide_x0 + w]
        scores["square"].append(iou(seen, truth))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["narrow"] >= NARROW_FLOOR, mean
    assert mean["narrow"] >= mean["square"] - NARROW_BEHIND_SQUARE, mean


def test_a_standing_person_gets_the_narrow_input_at_the_square_crops_scale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    grid = (256, 144)
    standing = (110, 30, 140, 110)  # 30 x 80 cells
    crop, variant, size = plan_crop(standing, grid, "auto", 0.0)
    assert (variant, size) == ("square", (160, 256))
    x0, y0, x1, y1 = crop
    assert x0 <= 110 and x1 >= 140 and y0 <= 30 and y1 >= 110  # the person, whole
    assert abs((x1 - x0) / (y1 - y0) - 160 / 256) < 0.05
    # running (4 % of their height a frame): the square crop's room beside them
    assert plan_crop(standing, grid, "auto", 3.2)[1:] == ("square", (256, 256))
    monkeypatch.setattr(selfie, "NARROW_WIDTHS", ())
    square, variant, size = plan_crop(standing, grid, "auto", 0.0)
    assert (variant, size) == ("square", (256, 256))
    assert square[3] - square[1] == y1 - y0  # the same height: the model sees the
    assert square[2] - square[0] > x1 - x0  # person as large, with less beside them
    # a person too wide for it keeps the square input; a group, the landscape model
    assert plan_crop((100, 30, 160, 110), grid, "auto", 0.0)[1:] == ("square", (256, 256))
    assert plan_crop((60, 60, 200, 110), grid, "auto", 0.0)[1:] == ("landscape", (256, 144))
