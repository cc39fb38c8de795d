"""StreamingSAM2 against Meta's SAM2VideoPredictor on real DAVIS frames.

Both run the same randomly initialised SAM 2.1 tiny model (no checkpoint can be
downloaded here) at a small image size so the file runs in a few minutes on 2
CPU cores. Random weights make the masks meaningless but every code path (memory
attention, object pointers, conditioning-frame selection, memory encoder) still
runs, so bit-exact agreement of the logits is a strict test of the mirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import load_davis
from bench.sam2_fixture import random_sam2
from live.checkpoints import ModelMissingError
from live.config import EngineSettings, SettingsError, check_engine_setting
from live.segment import Prompt, PromptError
from live.segment.pil_resize import resize_like_pil
from live.segment.sam2_stream import StreamingSAM2, tensor_bytes

SIZE = 128


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_sam2(SIZE)


@pytest.fixture(scope="module")
def model64() -> torch.nn.Module:
    """The smallest size SAM 2 takes: the 300-frame memory test only counts bytes."""
    return random_sam2(64)


@dataclass
class Clip:
    folder: Path  # JPEGs named 00000.jpg ... as the official loader wants
    frames: list[np.ndarray]  # the same JPEGs decoded by PIL, as BGR
    masks: list[np.ndarray]  # DAVIS ground truth (only used to place clicks)


def make_clip(data_dir: Path, tmp_path: Path, seq: str, n: int) -> Clip:
    """The first n frames of a DAVIS sequence, ping-ponged if it is shorter."""
    try:
        davis = load_davis(data_dir / f"davis-{seq}", n, pingpong=True)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return Clip(davis.link_jpegs(tmp_path / seq), davis.frames, davis.masks)


def inside_point(mask: np.ndarray, label: int = 1) -> tuple[float, float, int]:
    """A pixel well inside the object (or well outside it, for label 0)."""
    ys, xs = np.nonzero(mask if label else ~mask)
    i = len(xs) // 2
    return float(xs[i]), float(ys[i]), label


@dataclass
class Event:
    frame: int
    kind: str  # "next": prompt before the frame is tracked; "correct": after it
    prompt: Prompt


def run_official(model: torch.nn.Module, clip: Clip, events: list[Event], n: int
                 ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict]:
    """Drive SAM2VideoPredictor as a user of its API would to get streaming semantics."""
    state = model.init_state(str(clip.folder))
    outputs: dict[int, torch.Tensor] = {}
    corrections = []
    next_frame = 0

    def propagate(last: int) -> None:
        nonlocal next_frame
        if last < next_frame:
            return
        for idx, _, masks in model.propagate_in_video(state, start_frame_idx=next_frame,
                                                      max_frame_num_to_track=last - next_frame):
            outputs[idx] = masks.clone()
        next_frame = last + 1

    for ev in events:
        propagate(ev.frame - 1 if ev.kind == "next" else ev.frame)
        p = ev.prompt
        if p.mask is not None:
            _, _, masks = model.add_new_mask(state, ev.frame, p.obj_id, p.mask)
        else:
            pts = np.array([(x, y) for x, y, _ in p.points], np.float32).reshape(-1, 2)
            labels = np.array([lab for _, _, lab in p.points], np.int32)
            _, _, masks = model.add_new_points_or_box(
                state, ev.frame, p.obj_id, points=pts if len(pts) else None,
                labels=labels if len(pts) else None, box=p.box,
                clear_old_points=p.clear_old_points)
        if ev.kind == "correct":
            corrections.append(masks.clone())
    propagate(n - 1)
    return outputs, corrections, state


def run_stream(stream: StreamingSAM2, clip: Clip, events: list[Event], n: int
               ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
    outputs, corrections = {}, []
    for i in range(n):
        for ev in events:
            if ev.frame == i and ev.kind == "next":
                stream.add_prompt(ev.prompt)
        _, outputs[i] = stream.track(clip.frames[i])
        for ev in events:
            if ev.frame == i and ev.kind == "correct":
                corrections.append(stream.correct(ev.prompt)[1])
    return outputs, corrections


def assert_identical(model, clip, events, n, max_cond_frames=4):
    stream = StreamingSAM2(model, max_cond_frames=max_cond_frames, precision="fp32")
    ours, our_corr = run_stream(stream, clip, events, n)
    theirs, their_corr, _ = run_official(model, clip, events, n)
    assert sorted(theirs) == list(range(n))
    worst = max(float((ours[i] - theirs[i]).abs().max()) for i in range(n))
    assert all(ours[i].shape == theirs[i].shape for i in range(n))
    assert worst == 0.0, f"max |logit diff| {worst}"
    assert len(our_corr) == len(their_corr)
    for a, b in zip(our_corr, their_corr):
        assert float((a - b).abs().max()) == 0.0
    # the masks are not all "absent": the comparison covered real logits
    assert any(float(ours[i].max()) > -1000 for i in range(n))
    return stream


def test_preprocessing_equals_official_loader(model, data_dir, tmp_path):
    from sam2.utils.misc import load_video_frames

    clip = make_clip(data_dir, tmp_path, "lucia", 3)
    images, h, w = load_video_frames(str(clip.folder), SIZE, offload_video_to_cpu=True,
                                     compute_device=torch.device("cpu"))
    stream = StreamingSAM2(model, precision="fp32")
    assert (h, w) == clip.frames[0].shape[:2]
    for i, frame in enumerate(clip.frames):
        assert torch.equal(stream.preprocess(frame)[0], images[i])


@pytest.mark.parametrize("size", [64, 128, 512])
def test_resize_like_pil_is_exact(data_dir, size):
    """The GPU path's resize, run here on the CPU: integer arithmetic, so exact anywhere."""
    img = Image.open(data_dir / "davis-parkour" / "frames" / "00007.jpg").convert("RGB")
    for im in (img, img.crop((0, 0, 176, 144))):  # downscale, and upscale at 512
        ref = np.asarray(im.resize((size, size), Image.BICUBIC))
        got = resize_like_pil(torch.from_numpy(np.array(im)), size).numpy()
        assert np.array_equal(ref, got)


def test_preprocessing_on_device_path_equals_official_loader(model, data_dir, tmp_path):
    from sam2.utils.misc import load_video_frames

    clip = make_clip(data_dir, tmp_path, "hike", 2)
    images, _, _ = load_video_frames(str(clip.folder), SIZE, offload_video_to_cpu=True,
                                     compute_device=torch.device("cpu"))
    stream = StreamingSAM2(model, precision="fp32", resize_on_device=True)
    for i, frame in enumerate(clip.frames):
        assert torch.equal(stream.preprocess(frame)[0], images[i])


def test_point_prompt_matches_official(model, data_dir, tmp_path):
    clip = make_clip(data_dir, tmp_path, "hike", 40)
    events = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(clip.masks[0]),)))]
    assert_identical(model, clip, events, 40)


def test_mask_prompt_and_correction_click_match_official(model, data_dir, tmp_path):
    clip = make_clip(data_dir, tmp_path, "lucia", 40)
    events = [Event(0, "next", Prompt(obj_id=1, mask=clip.masks[0])),
              Event(17, "correct", Prompt(obj_id=1, points=(inside_point(clip.masks[17]),))),
              Event(17, "correct", Prompt(obj_id=1, points=(inside_point(clip.masks[17], 0),),
                                          clear_old_points=False))]
    assert_identical(model, clip, events, 40)


def test_two_objects_match_official(model, data_dir, tmp_path):
    clip = make_clip(data_dir, tmp_path, "dance-twirl", 40)
    m = clip.masks[0]
    ys, xs = np.nonzero(m)
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    events = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(m),))),
              Event(0, "next", Prompt(obj_id=7, box=box, points=(inside_point(m, 0),)))]
    stream = assert_identical(model, clip, events, 40)
    sizes = stream.state_bytes()
    assert set(sizes["objects"]) == {1, 7}
    assert sizes["total"] == sizes["shared"] + sum(sizes["objects"].values())


def test_repeated_prompts_under_cond_cap_match_official(model, data_dir, tmp_path):
    """A new mask prompt every 5 frames: 9 conditioning frames, only 3 ever attended."""
    clip = make_clip(data_dir, tmp_path, "parkour", 45)
    events = [Event(i, "next", Prompt(obj_id=1, mask=clip.masks[i])) for i in range(0, 45, 5)]
    stream = assert_identical(model, clip, events, 45, max_cond_frames=3)
    # older conditioning frames are freed once nothing can select them any more
    assert len(stream.stats()["cond_frames"][1]) <= 3 + 1


def official_state_bytes(state: dict) -> int:
    return tensor_bytes([state["output_dict_per_obj"], state["temp_output_dict_per_obj"],
                         state["constants"]])


def test_state_is_bounded_while_official_grows(model64, data_dir, tmp_path):
    model = model64
    n = 300
    clip = make_clip(data_dir, tmp_path, "breakdance", n)
    events = [Event(0, "next", Prompt(obj_id=1, points=(inside_point(clip.masks[0]),)))]
    stream = StreamingSAM2(model, max_cond_frames=4, precision="fp32")
    sizes = []
    for i in range(n):
        for ev in events:
            if ev.frame == i:
                stream.add_prompt(ev.prompt)
        stream.step(clip.frames[i])
        sizes.append(stream.state_bytes()["total"])
    assert sizes[100] == sizes[-1] > 0
    assert stream.stats()["memory_bank_bytes"] == sizes[-1]
    # the official predictor on a prefix of the same clip: one more entry per frame
    short = 40
    _, _, state = run_official(model, clip, events, short)
    grown = official_state_bytes(state)
    model.reset_state(state)
    _, _, state = run_official(model, clip, events, short // 2)
    assert grown > official_state_bytes(state)
    assert grown > sizes[-1]


def test_step_alpha_shape_and_union(model, data_dir, tmp_path):
    clip = make_clip(data_dir, tmp_path, "hike", 3)
    stream = StreamingSAM2(model, precision="fp32")
    alpha = stream.step(clip.frames[0])
    assert alpha.shape == (SIZE, SIZE) and alpha.dtype == np.float32 and alpha.max() == 0.0
    stream.add_prompt(Prompt(obj_id=1, mask=clip.masks[1]))
    alpha = stream.step(clip.frames[1])
    # a mask prompt is output as is (use_mask_input_as_output_without_sam): alpha ~ the mask
    small = np.asarray(Image.fromarray(clip.masks[1]).resize((SIZE, SIZE)))
    inter = np.logical_and(alpha > 0.5, small).sum()
    union = np.logical_or(alpha > 0.5, small).sum()
    assert inter / union > 0.8
    assert stream.stats()["objects"] == [1] and stream.stats()["frames"] == 2
    stream.remove_object(1)
    assert stream.step(clip.frames[2]).max() == 0.0
    stream.reset()
    assert stream.stats()["frames"] == 0 and stream.state_bytes()["objects"] == {}


def test_clear_errors(model, data_dir, tmp_path):
    clip = make_clip(data_dir, tmp_path, "hike", 1)
    stream = StreamingSAM2(model, precision="fp32")
    with pytest.raises(PromptError, match="no frame yet"):
        stream.correct(Prompt(points=((1.0, 1.0, 1),)))
    stream.step(clip.frames[0])
    h, w = clip.frames[0].shape[:2]
    with pytest.raises(PromptError, match="outside the 854x480 frame"):
        stream.add_prompt(Prompt(points=((w + 5.0, 10.0, 1),)))
    with pytest.raises(PromptError, match="outside"):
        stream.add_prompt(Prompt(box=(0.0, 0.0, w + 1.0, 10.0)))
    with pytest.raises(PromptError, match="label"):
        stream.add_prompt(Prompt(points=((5.0, 5.0, 3),)))
    with pytest.raises(PromptError, match="needs points"):
        stream.add_prompt(Prompt())
    with pytest.raises(PromptError, match="mask is"):
        stream.add_prompt(Prompt(mask=np.ones((10, 10), bool)))
    with pytest.raises(PromptError, match="unknown object id 42"):
        stream.remove_object(42)
    with pytest.raises(SettingsError, match="multiple of 32"):
        check_engine_setting("image_size", 100)
    with pytest.raises(SettingsError, match="max_cond_frames must be between 2 and"):
        StreamingSAM2(model, max_cond_frames=1)
    with pytest.raises(ValueError, match="BGR uint8"):
        stream.step(np.zeros((4, 4), np.uint8))
    # before any frame a click cannot be checked against the frame: dropped with a warning
    stream.reset()
    stream.add_prompt(Prompt(points=((w + 5.0, 10.0, 1),)))
    stream.step(clip.frames[0])
    assert stream.obj_ids == []


def test_missing_checkpoint_names_the_fetch_command(tmp_path, monkeypatch):
    from live.segment.auto_prompt import AutoPromptedSAM2

    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(ModelMissingError, match="live fetch sam2 --model small"):
        AutoPromptedSAM2(EngineSettings(name="sam2", sam2_model="small", device="cpu"))
    from live.segment import create_segmenter

    with pytest.raises(ModelMissingError, match="live fetch sam2 --model tiny"):
        create_segmenter(EngineSettings(name="sam2"))
