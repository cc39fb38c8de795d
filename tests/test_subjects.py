"""SubjectSelector: keep everyone, or one tracked main subject that never flips."""

from __future__ import annotations

import numpy as np
import pytest

from live.subjects import SubjectSelector

H, W = 144, 256


def people(*boxes: tuple[int, int, int, int], value: float = 0.95) -> np.ndarray:
    """An alpha with one solid blob per (y0, x0, height, width) box."""
    alpha = np.zeros((H, W), np.float32)
    for y0, x0, h, w in boxes:
        alpha[y0:y0 + h, x0:x0 + w] = value
    return alpha


LEFT = (20, 20, 100, 50)
RIGHT = (20, 170, 100, 50)


def kept(out: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y0, x0, h, w = box
    return bool(out[y0 + h // 2, x0 + w // 2] > 0.5)


def test_all_mode_is_identity() -> None:
    alpha = people(LEFT, RIGHT)
    assert SubjectSelector("all").apply(alpha) is alpha


def test_main_keeps_the_largest_blob_with_its_soft_edge() -> None:
    alpha = people(LEFT, (30, 170, 60, 40))
    alpha[20:120, 70:72] = 0.3  # soft edge right beside the main subject
    out = SubjectSelector("main").apply(alpha)
    assert out.shape == alpha.shape and out.dtype == np.float32
    assert kept(out, LEFT) and not kept(out, (30, 170, 60, 40))
    assert out[60, 70] == pytest.approx(0.3)  # the soft edge stays
    assert out[60, 190] == 0.0


def test_main_does_not_jump_between_two_people_of_similar_size() -> None:
    sel = SubjectSelector("main")
    first = sel.apply(people(LEFT, RIGHT))
    chosen_left = kept(first, LEFT)
    for t in range(40):  # the other person is alternately a little bigger
        grow = 8 if t % 2 == 0 else -8
        right = (RIGHT[0], RIGHT[1], RIGHT[2] + grow, RIGHT[3])
        left = (LEFT[0], LEFT[1], LEFT[2] - grow, LEFT[3])
        out = sel.apply(people(left, right))
        assert kept(out, left) == chosen_left and kept(out, right) != chosen_left


def test_main_follows_the_subject_as_it_moves() -> None:
    sel = SubjectSelector("main")
    sel.apply(people((20, 20, 100, 60), (40, 180, 50, 30)))
    for dx in range(0, 80, 4):  # the main subject walks right, overlapping itself
        out = sel.apply(people((20, 20 + dx, 100, 60), (40, 180, 50, 30)))
        assert kept(out, (20, 20 + dx, 100, 60))


def test_main_keeps_its_subject_however_big_a_bystander_grows() -> None:
    sel = SubjectSelector("main", switch_frames=5)
    sel.apply(people(LEFT, (20, 170, 80, 40)))
    big_right = (10, 150, 130, 100)  # walks up to the camera: 2.6x the main subject
    outs = [sel.apply(people(LEFT, big_right)) for _ in range(30)]
    assert all(kept(o, LEFT) and not kept(o, big_right) for o in outs)


def test_main_waits_for_a_missing_subject_before_taking_another_and_reset_forgets() -> None:
    sel = SubjectSelector("main", switch_frames=5)
    sel.apply(people(LEFT, (40, 180, 50, 30)))
    for _ in range(5):  # the main subject is gone: the bystander is not shown meanwhile
        assert not sel.apply(people((40, 180, 50, 30))).any()
    out = sel.apply(people((40, 180, 50, 30)))  # gone for longer than switch_frames
    assert kept(out, (40, 180, 50, 30))
    assert not sel.apply(np.zeros((H, W), np.float32)).any()
    sel.apply(people(RIGHT))
    sel.reset()
    out = sel.apply(people(LEFT, (40, 180, 50, 30)))  # fresh choice: the largest
    assert kept(out, LEFT)


def test_main_never_gives_the_main_subject_up_for_a_bystander_it_lost_for_a_moment() -> None:
    """The model loses the main person for two frames (a dropout) while a bigger
    bystander stays: the bystander is never shown, and the main person comes back."""
    sel = SubjectSelector("main")
    bystander = (10, 150, 130, 100)  # bigger than the main subject
    main = (40, 20, 80, 40)
    sel.apply(people(main))  # the main subject is alone at first
    script = [people(main, bystander)] * 3 + [people(bystander)] * 2 + \
        [people((40, 30, 80, 40), bystander)] * 5  # back, having moved a little
    for alpha in script:
        out = sel.apply(alpha)
        assert not kept(out, bystander)
    assert kept(out, (40, 30, 80, 40))


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'all' or 'main'"):
        SubjectSelector("everyone")  # type: ignore[arg-type]
