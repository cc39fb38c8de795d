"""A browser's frames stay I420 from decoder to encoder: the same picture as the BGR
path, for less work. Each I420 stage is checked against the BGR stage it replaces."""

from __future__ import annotations

from pathlib import Path

import cv2
import av  # after cv2 (PyAV #978)
import numpy as np
import pytest

from bench.data import load_davis
from bench.quality import iou
from live.composite import AlphaLevels, Compositor, _even_disjoint, blend_i420
from live.config import BackgroundSettings, Settings
from live.frames import I420, EndOfStream, Frame, I420Pyramid, Pyramid
from live.io import NullSink
from live.io.synthetic import SyntheticSource
from live.io.webrtc import VideoOutputTrack, encoder_frame
from live.matte import Matte, guided_upsample
from live.pipeline import FrameProcessor, Pipeline
from utils import asynctest

W, H = 1280, 720
SELFIE = Settings().merged({"engine": {"name": "selfie"}})


def picture(index: int = 10) -> I420:
    """A camera-like 720p frame (textured background, a figure) as a decoder gives it."""
    return I420.from_bgr(SyntheticSource(W, H).render(index))


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_the_planes_are_views_of_one_buffer_and_an_odd_size_is_refused() -> None:
    p = picture()
    p.y[0, 0], p.u[0, 0], p.v[-1, -1] = 1, 2, 3
    flat = p.buffer.reshape(-1)
    assert (flat[0], flat[W * H], flat[-1]) == (1, 2, 3)
    assert p.u.shape == p.v.shape == (H // 2, W // 2) and p.shape == (H, W)
    assert mean_diff(I420.from_bgr(p.to_bgr()).buffer, p.buffer) < 1.0  # a round trip
    with pytest.raises(ValueError, match="even size"):
        I420(np.zeros(15 * 9 * 3 // 2 + 1, np.uint8), 15, 9)
    with pytest.raises(ValueError, match="needs 1382400 bytes"):
        I420(np.zeros(100, np.uint8), W, H)


def test_the_pyramid_of_an_i420_frame_gives_the_copies_of_its_bgr_frame() -> None:
    """Halving the planes, then converting, is the same picture as converting, then
    halving, up to rounding: measured mean 0.1-0.4 levels of luminance at every
    level, 0.3-1.0 of colour at the levels the model and blur start from (a wrong
    plane, matrix or offset is tens of levels off). Deeper, the chroma is at its
    own half resolution (this frame's 40 px red squares are 2.5 chroma samples
    at level 3): the blur there does not see it."""
    p = picture()
    yuv, bgr = Pyramid.of(p), Pyramid(p.to_bgr())
    assert isinstance(yuv, I420Pyramid) and yuv.size == bgr.size == (W, H)

    def gray(image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    for k in (1, 2, 3, 4):  # level 4 is 80x45: odd, made from level 3
        assert yuv.halved(k).shape == bgr.halved(k).shape
        assert mean_diff(gray(yuv.halved(k)), gray(bgr.halved(k))) < 1.0, k
    for k in (1, 2):
        assert mean_diff(yuv.halved(k), bgr.halved(k)) < 2.0, k
    assert mean_diff(yuv.shrunk(256, 144), bgr.shrunk(256, 144)) < 2.0
    assert mean_diff(yuv.gray(256, 144), bgr.gray(256, 144)) < 1.0  # the limited range undone
    assert 0 not in yuv._bgr  # no full-size BGR copy was made for any of it
    assert np.array_equal(yuv.image, p.to_bgr())  # ...unless a stage asks for it


def test_the_matte_guide_folds_the_limited_range_in_exactly() -> None:
    """q = a * (Y - 16) / 219 + b, computed on Y as is, equals the filter on the
    full-range luminance: the I420 path spends no pass on rescaling the frame."""
    p = picture()
    rng = np.random.default_rng(0)
    alpha = cv2.GaussianBlur(rng.random((144, 256), dtype=np.float32), (9, 9), 3)
    guide = I420Pyramid(p).gray(256, 144) / 255.0
    full_range = (p.y.astype(np.float32) - 16.0) * np.float32(255.0 / 219.0)
    folded = guided_upsample(alpha, p.y, guide, 2.0, 1e-3, black=16.0, span=219.0)
    direct = guided_upsample(alpha, full_range, guide, 2.0, 1e-3)
    assert np.abs(folded - direct).max() < 1e-4


def test_boxes_widened_to_even_bounds_are_merged_where_they_then_overlap() -> None:
    boxes = [(3, 5, 101, 51), (101, 7, 200, 40), (300, 300, 311, 313)]
    out = _even_disjoint(boxes)
    assert sorted(out) == [(2, 4, 200, 52), (300, 300, 312, 314)]
    for x0, y0, x1, y1 in out:
        assert x0 % 2 == y0 % 2 == x1 % 2 == y1 % 2 == 0


@pytest.mark.parametrize("mode", ["blur", "color", "image"])
def test_compositing_in_i420_gives_the_picture_of_the_bgr_path(mode: str, tmp_path: Path) -> None:
    p = picture()
    bgr = p.to_bgr()
    image = tmp_path / "bg.png"
    cv2.imwrite(str(image), SyntheticSource(640, 480).render(99)[:, ::-1])
    settings = BackgroundSettings(mode=mode, color="#20c040", image=str(image))
    low = np.zeros((144, 256), np.float32)
    low[20:140, 90:170] = 1.0  # a person, soft edges after the matte
    alpha, boxes = Matte().apply(low, bgr)
    got = Compositor(settings).apply(Pyramid.of(p), alpha, boxes)
    want = I420.from_bgr(Compositor(settings).apply(bgr, alpha, boxes))
    assert isinstance(got, I420)
    # measured 0.3-0.6 levels; the chroma is blended at its own resolution
    assert mean_diff(got.y, want.y) < 1.5 and mean_diff(got.u, want.u) < 1.5
    inside, outside = alpha == 1.0, alpha == 0.0
    assert np.array_equal(got.y[inside], p.y[inside])  # the person, untouched
    if mode == "color":  # the background exactly, everywhere the person is not
        fill = I420.from_bgr(np.full((2, 2, 3), (0x40, 0xc0, 0x20), np.uint8))
        assert (got.y[outside] == fill.y[0, 0]).all()


def test_odd_boxes_blend_each_chroma_sample_once() -> None:
    """Two boxes meeting on an odd column share a chroma sample; blended twice it
    would mix the frame in twice. Widened and merged, it is blended once."""
    frame = I420.from_planes(np.full((8, 8), 200, np.uint8), np.full((4, 4), 200, np.uint8),
                             np.full((4, 4), 200, np.uint8))
    bg = I420.from_planes(np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.uint8),
                          np.zeros((4, 4), np.uint8))
    alpha = np.zeros((8, 8), np.float32)
    alpha[2:6, 1:7] = 0.5
    out = blend_i420(frame, bg, AlphaLevels(alpha), [(1, 2, 3, 6), (3, 2, 7, 6)], out=bg)
    assert out.u[1, 1] == 100 and out.u[1, 0] == 50  # alpha 0.5 on all 4, on 2 of 4 pixels
    assert out.y[2, 3] == 100 and out.y[0, 0] == 0


def decoded(p: I420) -> av.VideoFrame:
    """``p`` as a decoder hands it on: a PyAV frame, rows padded where FFmpeg pads them."""
    frame = av.VideoFrame(p.width, p.height, "yuv420p")
    for plane, src in zip(frame.planes, p.planes):
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        rows[:, :plane.width] = src
        rows[:, plane.width:] = 255  # padding a reader must never take for picture
    return frame


def test_a_decoded_frame_is_read_in_place_and_never_written() -> None:
    """854x480: FFmpeg pads its rows (864 and 432 bytes), so the planes are strided views."""
    p = I420.from_bgr(SyntheticSource(854, 480).render(3))
    frame = decoded(p)
    assert frame.planes[0].line_size > 854
    seen = I420.of_video_frame(frame)
    for a, b, plane in zip(seen.planes, p.planes, frame.planes):
        assert np.array_equal(a, b)
        assert np.shares_memory(a, np.frombuffer(plane, np.uint8))  # not copied
    assert np.array_equal(seen.buffer, p.buffer)  # one buffer, padding left out
    assert seen.video_frame is None  # not a frame the encoder may take as it is
    with pytest.raises(ValueError, match="read-only"):
        seen.y[0, 0] = 1  # the decoder may predict its next frame from this one
    copy = seen.copy()  # writable, in a frame of its own
    copy.y[0, 0] = p.y[0, 0] ^ 1
    assert seen.y[0, 0] == p.y[0, 0] and copy.video_frame is not None
    # the whole pipeline on the strided views gives what it gives on one buffer
    a = FrameProcessor(SELFIE).process(Frame(seen, 0, 0.0))
    b = FrameProcessor(SELFIE).process(Frame(p, 0, 0.0))
    assert np.array_equal(a.alpha, b.alpha)
    assert np.array_equal(a.image.buffer, b.image.buffer)


def test_the_composited_picture_is_drawn_into_the_frame_the_encoder_takes() -> None:
    result = FrameProcessor(SELFIE).process(Frame(I420.of_video_frame(decoded(picture())), 0, 0.0))
    out = encoder_frame(result.image)
    assert out is result.image.video_frame  # no copy on the way out
    assert np.array_equal(out.to_ndarray(), result.image.buffer)
    # a picture that is not its own frame's (a pass-through) is copied, not shared
    passed = I420.of_video_frame(decoded(picture()))
    sent = encoder_frame(passed)
    assert isinstance(sent, av.VideoFrame) and np.array_equal(sent.to_ndarray(), passed.buffer)
    assert not np.shares_memory(np.frombuffer(sent.planes[0], np.uint8), passed.y)


def test_a_processed_i420_frame_reaches_an_i420_sink_as_is_and_a_bgr_sink_converted() -> None:
    processor = FrameProcessor(SELFIE)
    result = processor.process(Frame(picture(), 0, 0.0))
    assert isinstance(result.image, I420) and result.alpha.shape == (H, W)
    assert encoder_frame(result.image).format.name == "yuv420p"

    class I420Source:
        """Frames as a WebRTC track gives them (``TrackSource`` over a real peer is
        covered in test_server_webrtc); not live, so every frame is processed."""

        live = False

        def __init__(self) -> None:
            self.n = 0

        async def read(self) -> Frame:
            if self.n == 5:
                raise EndOfStream
            self.n += 1
            return Frame(picture(self.n), self.n - 1, self.n / 30)

        def stats(self) -> dict:
            return {}

        async def close(self) -> None:
            pass

    class Seen(NullSink):
        def __init__(self, takes_i420: bool) -> None:
            super().__init__()
            self.takes_i420 = takes_i420
            self.kinds: set[str] = set()

        async def write(self, image, frame) -> None:
            self.kinds.add(type(image).__name__)
            await super().write(image, frame)

    bgr_sink, i420_sink = Seen(False), Seen(True)

    @asynctest
    async def run() -> None:
        pipe = Pipeline(I420Source(), [bgr_sink, i420_sink], FrameProcessor(SELFIE))
        await pipe.run()
        assert not pipe.errors

    run()
    assert bgr_sink.kinds == {"ndarray"} and i420_sink.kinds == {"I420"}
    assert bgr_sink.frames == i420_sink.frames == 5
    assert VideoOutputTrack.takes_i420  # the WebRTC sink: straight to the encoder


def test_the_i420_path_scores_as_the_bgr_path_on_davis(data_dir: Path) -> None:
    """The engine and matte fed the I420 picture a browser sends score as on the
    BGR frames: measured on all five sequences, mean IoU 0.7048 against 0.7049,
    boundary F 0.718 against 0.715; per sequence within 0.013 (breakdance, whose
    IoU is 0.21 either way). A wrong chroma or luma range costs far more."""
    for name in ("hike", "parkour"):
        folder = data_dir / f"davis-{name}"
        if not folder.is_dir():
            pytest.skip(f"{folder} is missing from the evaluation data")
        clip = load_davis(folder)
        scores = {}
        for layout, convert in (("bgr", lambda f: f), ("i420", I420.from_bgr)):
            processor = FrameProcessor(SELFIE)
            scores[layout] = np.mean([
                iou(processor.process(Frame(convert(f), i, i / 30)).alpha, gt)
                for i, (f, gt) in enumerate(zip(clip.frames, clip.masks))])
        assert abs(scores["i420"] - scores["bgr"]) < 0.012, (name, scores)
