"""Compositor: every background mode, no bleed in blur, safe switching, looping video."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from live.composite import (AlphaLevels, BackgroundError, BlurBackground, Compositor, blend,
                            fit_image, hex_to_bgr)
from live.config import BackgroundSettings
from live.frames import Pyramid

H, W = 180, 320


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A bright subject square on a dark textured background, and its alpha."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
    frame[50:130, 120:200] = 250
    alpha = np.zeros((H, W), np.float32)
    alpha[50:130, 120:200] = 1.0
    return frame, alpha


def write_video(path: Path, colors: list[tuple[int, int, int]], size=(64, 48)) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for bgr in colors:
            img = np.full((size[1], size[0], 3), bgr, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_color_mode_replaces_background_and_keeps_subject() -> None:
    frame, alpha = scene()
    out = Compositor(BackgroundSettings(mode="color", color="#102030")).apply(frame, alpha)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert tuple(out[10, 10]) == hex_to_bgr("#102030") == (0x30, 0x20, 0x10)
    assert np.array_equal(out[60:120, 130:190], frame[60:120, 130:190])


def test_half_alpha_blends_half_way() -> None:
    frame = np.full((H, W, 3), 200, np.uint8)
    alpha = np.full((H, W), 0.5, np.float32)
    out = Compositor(BackgroundSettings(mode="color", color="#000000")).apply(frame, alpha)
    assert np.all(np.abs(out.astype(int) - 100) <= 1)


def test_blur_has_no_person_bleed() -> None:
    frame, alpha = scene()
    out = Compositor(BackgroundSettings(mode="blur", blur=25)).apply(frame, alpha)
    ring = out[40:140, 100:220].astype(int)  # background just around the subject
    ring_mask = np.ones(ring.shape[:2], bool)
    ring_mask[10:90, 20:100] = False  # the subject itself
    assert ring[ring_mask].max() < 60  # stays dark: no bright halo from the subject
    naive = cv2.blur(frame, (51, 51))[40:140, 100:220].astype(int)
    assert naive[ring_mask].max() > 120  # what a plain blur would have done
    assert np.array_equal(out[60:120, 130:190], frame[60:120, 130:190])
    assert out[0:30].std() < frame[0:30].std() / 2  # the background really is blurred


def test_blur_when_the_subject_fills_the_frame() -> None:
    frame, _ = scene()
    out = Compositor(BackgroundSettings(mode="blur")).apply(frame, np.ones((H, W), np.float32))
    assert np.array_equal(out, frame)


def test_transparent_gives_bgra_with_the_matte_as_alpha() -> None:
    frame, alpha = scene()
    alpha[0:10] = 0.5
    out = Compositor(BackgroundSettings(mode="transparent")).apply(frame, alpha)
    assert out.shape == (H, W, 4) and out.dtype == np.uint8
    assert np.array_equal(out[..., :3], frame)
    assert np.array_equal(out[..., 3], np.round(alpha * 255).astype(np.uint8))


def test_image_cover_and_contain(tmp_path: Path) -> None:
    img = np.zeros((100, 400, 3), np.uint8)  # 4:1, wider than the 16:9 frame
    img[:, :200] = (255, 0, 0)
    img[:, 200:] = (0, 0, 255)
    path = tmp_path / "bg.png"
    cv2.imwrite(str(path), img)
    frame, alpha = scene()
    cover = Compositor(BackgroundSettings(mode="image", image=str(path))).apply(frame, alpha)
    assert tuple(cover[5, 5]) == (255, 0, 0) and tuple(cover[5, W - 5]) == (0, 0, 255)
    contain = Compositor(BackgroundSettings(mode="image", image=str(path), fit="contain",
                                            color="#00ff00")).apply(frame, alpha)
    assert tuple(contain[H // 2, 5]) == (255, 0, 0)
    # The bars (50 px above and below) are a dimmed, blurred copy of the image, never
    # the colour setting: blue-ish on the left, red-ish on the right, no green.
    left, right = contain[2, 5].astype(int), contain[H - 3, W - 6].astype(int)
    assert left[1] < 10 and right[1] < 10
    assert left[0] > 80 and left[0] > left[2] + 60
    assert right[2] > 80 and right[2] > right[0] + 60
    assert left[0] < 200  # dimmed, so the picture itself stands out


def test_video_contain_letterboxes_in_black(tmp_path: Path) -> None:
    path = tmp_path / "red.mp4"
    write_video(path, [(0, 0, 255)] * 3)  # 4:3 into a 16:9 frame: bars left and right
    frame, alpha = scene()
    comp = Compositor(BackgroundSettings(mode="video", video=str(path), fit="contain",
                                         color="#00ff00"))
    out = comp.apply(frame, alpha)
    comp.close()
    assert np.all(out[H // 2, :30] <= 3)  # black bars, not the colour setting
    assert np.all(out[H // 2, W - 30:] <= 3)
    assert tuple(out[H // 2, 60]) == pytest.approx((0, 0, 255), abs=8)


def test_fit_image_sizes() -> None:
    img = np.zeros((30, 40, 3), np.uint8)
    for fit in ("cover", "contain"):
        assert fit_image(img, 320, 180, fit).shape == (180, 320, 3)


def test_switching_modes_while_running(tmp_path: Path) -> None:
    frame, alpha = scene()
    path = tmp_path / "bg.jpg"
    cv2.imwrite(str(path), np.full((90, 160, 3), (0, 0, 200), np.uint8))
    comp = Compositor(BackgroundSettings(mode="blur"))
    seen = []
    for s in (BackgroundSettings(mode="color", color="#ffffff"),
              BackgroundSettings(mode="image", image=str(path)),
              BackgroundSettings(mode="image", image=str(path), fit="contain"),
              BackgroundSettings(mode="transparent"), BackgroundSettings(mode="blur")):
        comp.update(s)
        out = comp.apply(frame, alpha)
        seen.append(out[5, 5].tolist())
        assert comp.settings == s
    assert seen[0] == [255, 255, 255]
    assert abs(seen[1][2] - 200) <= 3 and seen[1][0] <= 3
    assert len(seen[3]) == 4 and seen[3][3] == 0
    comp.close()


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (decoding it would need gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["missing", "corrupt", "huge", "empty"])
def test_bad_image_raises_and_keeps_the_previous_background(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "upload.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    elif kind == "huge":
        png_header_only(path, 10_000, 6_000)  # 60 megapixels
    elif kind == "empty":
        path.write_bytes(b"")
    frame, alpha = scene()
    comp = Compositor(BackgroundSettings(mode="color", color="#0000ff"))
    before = comp.apply(frame, alpha)
    with pytest.raises(BackgroundError, match="upload.png") as err:
        comp.update(BackgroundSettings(mode="image", image=str(path)))
    assert isinstance(err.value, ValueError)
    if kind == "huge":
        assert "megapixels" in str(err.value)
    assert comp.settings.mode == "color"
    assert np.array_equal(comp.apply(frame, alpha), before)


def test_bad_image_in_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(BackgroundError, match="no such file"):
        Compositor(BackgroundSettings(mode="image", image=str(tmp_path / "nope.jpg")))


def test_video_background_loops(tmp_path: Path) -> None:
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)]
    path = tmp_path / "loop.mp4"
    write_video(path, colors)
    frame, alpha = scene()
    comp = Compositor(BackgroundSettings(mode="video", video=str(path)))
    shown: list[int] = []  # background colour per output frame, repeats collapsed
    deadline = time.monotonic() + 20
    while len(shown) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)  # a slow decoder repeats a frame; apply itself never waits
        px = comp.apply(frame, alpha)[5, 5].astype(int)
        index = int(np.argmin([np.abs(px - c).sum() for c in colors]))
        if not shown or shown[-1] != index:
            shown.append(index)
    comp.close()
    assert shown == [0, 1, 2, 3, 0, 1, 2, 3, 0]  # in order, and back to the start


def test_video_switch_to_a_bad_file_keeps_playing(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, [(0, 0, 255)] * 3)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    frame, alpha = scene()
    comp = Compositor(BackgroundSettings(mode="video", video=str(good)))
    with pytest.raises(BackgroundError, match="bad.mp4"):
        comp.update(BackgroundSettings(mode="video", video=str(bad)))
    with pytest.raises(BackgroundError, match="no such file"):
        comp.update(BackgroundSettings(mode="video", video=str(tmp_path / "gone.mp4")))
    assert tuple(comp.apply(frame, alpha)[5, 5]) == pytest.approx((0, 0, 255), abs=8)
    comp.close()


def test_frame_and_alpha_must_match() -> None:
    frame, alpha = scene()
    comp = Compositor()
    with pytest.raises(ValueError, match="does not match"):
        comp.apply(frame, alpha[:10])
    with pytest.raises(ValueError, match="uint8"):
        comp.apply(frame[..., 0], alpha)


def test_blending_only_around_the_person_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = np.zeros((H, W), np.float32)
    alpha[40:100, 60:150] = rng.random((60, 90), dtype=np.float32)
    alpha[170, 300] = 0.7  # one stray pixel far from the rest
    backgrounds = {"#203040": np.full((H, W, 3), (0x40, 0x30, 0x20), np.uint8),
                   "blur": BlurBackground(21).render(Pyramid(frame), AlphaLevels(alpha))}
    for spec, bg in backgrounds.items():
        settings = BackgroundSettings(mode="blur", blur=21) if spec == "blur" else \
            BackgroundSettings(mode="color", color=spec)
        out = Compositor(settings).apply(frame, alpha)
        assert np.array_equal(out, blend(frame, bg, alpha))


def test_a_reuploaded_image_under_the_same_name_is_reloaded(tmp_path: Path) -> None:
    import os

    path = tmp_path / "upload.png"
    frame, alpha = scene()
    cv2.imwrite(str(path), np.full((90, 160, 3), (255, 0, 0), np.uint8))
    comp = Compositor(BackgroundSettings(mode="image", image=str(path)))
    assert tuple(comp.apply(frame, alpha)[5, 5]) == (255, 0, 0)
    cv2.imwrite(str(path), np.full((90, 160, 3), (0, 0, 255), np.uint8))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime, surely
    comp.update(BackgroundSettings(mode="image", image=str(path), fit="contain"))
    assert tuple(comp.apply(frame, alpha)[H // 2, 5]) == (0, 0, 255)


@pytest.mark.parametrize("shape", [(181, 321), (720, 1280), (7, 5)])
def test_every_mode_on_any_frame_size(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    alpha = np.zeros(shape, np.float32)
    alpha[shape[0] // 4: shape[0] // 2, shape[1] // 3: shape[1] // 2 + 1] = 0.8
    for mode in ("blur", "color", "transparent"):
        out = Compositor(BackgroundSettings(mode=mode, blur=200)).apply(frame, alpha)
        assert out.shape[:2] == shape and out.dtype == np.uint8


@pytest.mark.parametrize("background", ["blur", "#00b140"])
def test_the_matte_boxes_give_the_same_picture(background: str) -> None:
    """With the matte's own boxes handed on, the output is the same as with a search."""
    from live.config import parse_background
    from live.matte import Matte

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    low = np.zeros((144, 256), np.float32)
    low[30:120, 40:90] = 1.0
    low[60:100, 180:200] = 0.8  # a second blob
    matte = Matte()
    alpha, boxes = matte.apply(low, frame)
    settings = BackgroundSettings(**parse_background(background))
    assert boxes
    hinted = Compositor(settings).apply(frame, alpha, boxes=boxes)
    searched = Compositor(settings).apply(frame, alpha)
    assert np.array_equal(hinted, searched)


def test_a_shared_pyramid_changes_nothing_but_the_cost() -> None:
    """Stages handed the frame's pyramid give exactly what they give building their own."""
    from live.matte import Matte

    frame = np.random.default_rng(2).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    low = np.zeros((144, 256), np.float32)
    low[30:120, 40:90] = 0.9
    pyramid = Pyramid(frame)
    matte = Matte()
    alpha, boxes = matte.apply(low, pyramid)
    shared = Compositor(BackgroundSettings(mode="blur")).apply(pyramid, alpha, boxes)
    alone = Compositor(BackgroundSettings(mode="blur")).apply(frame,
                                                              Matte().apply(low, frame).alpha)
    assert np.array_equal(shared, alone)
    assert pyramid.halved(2) is pyramid.halved(2)  # made once
    assert pyramid.shrunk(256, 144) is pyramid.shrunk(256, 144)


def test_the_pyramid_halvings_are_2x2_means() -> None:
    image = np.random.default_rng(3).random((64, 96, 3)).astype(np.float32)
    pyramid = Pyramid(image)
    expected = image
    for k in range(1, 4):
        h, w = expected.shape[:2]
        expected = expected.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(pyramid.halved(k), expected, atol=1e-5)
    small = pyramid.shrunk(20, 10)  # 96x64 -> halved twice (24x16) -> bilinear step to 20x10
    assert small.shape == (10, 20, 3)
    np.testing.assert_allclose(small.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=0.02)

