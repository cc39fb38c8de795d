"""The auto-prompter's decisions on a real clip, with a randomly initialised SAM 2.

Random weights make SAM 2's masks meaningless, so these tests check the control
logic: when it anchors, when it re-anchors and why, that blank frames cannot
anchor, that a click hands control to the user and reset() hands it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench import load_frames
from bench.sam2_fixture import random_sam2
from live.config import EngineSettings
from live.segment import Prompt, PromptError
from live.segment.auto_prompt import (AUTO_OBJ_ID, MIN_PERSON_FRACTION, AutoPromptedSAM2,
                                      largest_component, mask_iou)
from live.segment.sam2_stream import StreamingSAM2

SIZE = 128


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_sam2(SIZE)


@pytest.fixture(scope="module")
def frames(clip_path: Path) -> list[np.ndarray]:
    return load_frames(clip_path, 24)


def make_engine(model, **settings) -> AutoPromptedSAM2:
    cfg = EngineSettings(name="sam2", device="cpu", image_size=SIZE, **settings)
    return AutoPromptedSAM2(cfg, stream=StreamingSAM2(model, max_cond_frames=cfg.max_cond_frames,
                                                      precision="fp32"))


def feed_checked(engine: AutoPromptedSAM2, frame: np.ndarray) -> bool:
    """Step one frame and check the decision rule against what the engine reports.

    Returns whether this frame got a selfie anchor.
    """
    before = engine.stats()
    n_anchored = len(engine.anchored_frames)
    alpha = engine.step(frame)
    after = engine.stats()
    anchored = len(engine.anchored_frames) > n_anchored
    person_visible = engine.last_person_fraction >= MIN_PERSON_FRACTION
    # anchor iff the previous frame asked for one and there is a person to anchor on
    assert anchored == (before["waiting_for_anchor"] and person_visible)
    assert alpha.shape == (SIZE, SIZE)
    if AUTO_OBJ_ID in engine.stream.obj_ids:
        s = engine.settings
        expected_streak = (0 if anchored else before["disagree_streak"]) + 1 \
            if after["last_iou"] < s.reanchor_iou else 0
        assert after["disagree_streak"] == expected_streak
        lost = after["last_object_score"] <= 0
        assert after["waiting_for_anchor"] == (lost or expected_streak >= s.reanchor_frames)
    return anchored


def test_anchor_reanchor_and_user_mode(model, frames):
    engine = make_engine(model, reanchor_iou=0.3, reanchor_frames=3)
    black = np.zeros_like(frames[0])

    # nobody in view: nothing to anchor on, and no SAM 2 object at all
    for _ in range(3):
        assert not feed_checked(engine, black)
    assert engine.stream.obj_ids == [] and engine.stats()["waiting_for_anchor"]

    # the first frame with a person anchors object 1 with the selfie mask
    assert feed_checked(engine, frames[0])
    stats = engine.stats()
    assert stats["anchors"]["start"] == 1 and stats["objects"] == [AUTO_OBJ_ID]
    assert stats["cond_frames"] == {AUTO_OBJ_ID: [3]}
    # a mask prompt is SAM 2's output on its frame, so SAM 2 and the selfie mask agree there
    assert stats["last_iou"] > 0.5

    for frame in frames[1:12]:
        feed_checked(engine, frame)

    # blank frames: whatever SAM 2 says, there is no person to re-anchor on
    anchors_before = len(engine.anchored_frames)
    for _ in range(5):
        assert not feed_checked(engine, black)
    assert len(engine.anchored_frames) == anchors_before
    waiting = engine.stats()["waiting_for_anchor"]
    # the person comes back: re-anchored at once if SAM 2 was lost or disagreeing
    assert feed_checked(engine, frames[12]) == waiting

    # a user click takes over: the auto object is gone, re-anchoring is off
    h, w = frames[0].shape[:2]
    engine.add_prompt(Prompt(obj_id=5, points=((w / 2, h / 2, 1),)))
    assert engine.stats()["mode"] == "user"
    anchors = dict(engine.anchors)
    for frame in [frames[13], black, black, black, frames[14]]:
        engine.step(frame)
    stats = engine.stats()
    assert stats["objects"] == [5] and stats["anchors"] == anchors
    assert stats["cond_frames"] == {5: [0]}

    # reset: back to auto, anchored again from the selfie mask
    engine.reset()
    assert engine.stats()["mode"] == "auto" and engine.stream.obj_ids == []
    assert feed_checked(engine, frames[15])
    assert engine.stats()["anchors"] == {"start": 1, "lost": 0, "disagreement": 0}


def test_disagreement_forces_reanchoring(model, frames):
    """IoU under 1.0 always counts as disagreement: a re-anchor at least every 2 frames."""
    engine = make_engine(model, reanchor_iou=1.0, reanchor_frames=2, max_cond_frames=2)
    anchored = [feed_checked(engine, f) for f in frames[:12]]
    stats = engine.stats()
    assert anchored[0] and stats["reanchors"] >= 4
    assert stats["anchors"]["start"] == 1
    # many anchors, yet the conditioning frames stay capped (2 selected + recent ones)
    assert len(stats["cond_frames"][AUTO_OBJ_ID]) <= 2 + engine.stream.model.num_maskmem


def test_bad_click_keeps_auto_tracking(model, frames):
    engine = make_engine(model)
    engine.step(frames[0])
    with pytest.raises(PromptError, match="outside"):
        engine.add_prompt(Prompt(points=((5000.0, 10.0, 1),)))
    assert engine.stats()["mode"] == "auto" and engine.stream.obj_ids == [AUTO_OBJ_ID]


def test_helpers():
    a = np.zeros((4, 4), bool)
    assert mask_iou(a, a) == 1.0
    b = a.copy()
    b[:2] = True
    assert mask_iou(a, b) == 0.0 and mask_iou(b, b) == 1.0
    two = np.zeros((10, 10), bool)
    two[0:2, 0:2] = True
    two[5:10, 5:10] = True
    main = largest_component(two)
    assert main.sum() == 25 and not main[0, 0]


def test_random_weights_constructor(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))  # no checkpoint anywhere
    engine = AutoPromptedSAM2.with_random_weights(
        EngineSettings(name="sam2", device="cpu", image_size=64), precision="fp32")
    monkeypatch.undo()  # the selfie model does live there: do not fetch it again
    alpha = engine.step(np.zeros((48, 64, 3), np.uint8))
    assert alpha.shape == (64, 64) and engine.stats()["image_size"] == 64
