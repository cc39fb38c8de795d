"""The pipeline's promises: newest frame wins, drops are counted, settings swap between frames."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from live.config import Settings
from live.frames import EndOfStream, Frame
from live.pipeline import FrameProcessor, Mailbox, Pipeline
from live.io import NullSink
from live.segment import Prompt, PromptError
from live.io.synthetic import SyntheticSource
from utils import asynctest, run_bench

SELFIE = Settings().merged({"engine": {"name": "selfie"}})


@asynctest
async def test_mailbox_keeps_only_the_newest_and_counts_drops() -> None:
    box: Mailbox[int] = Mailbox()
    for i in range(5):
        box.put(i)
    first = await box.get()
    box.put(5)
    box.close()
    second = await box.get()
    with pytest.raises(EndOfStream):
        await box.get()
    assert [first, second] == [4, 5] and box.dropped == 4


@asynctest
async def test_lossless_mailbox_waits_instead_of_dropping() -> None:
    box: Mailbox[int] = Mailbox()

    async def produce() -> None:
        for i in range(20):
            await box.put_when_empty(i)
        box.close()

    task = asyncio.create_task(produce())
    got = []
    try:
        while True:
            got.append(await box.get())
            await asyncio.sleep(0)
    except EndOfStream:
        await task
    assert box.dropped == 0
    assert got == list(range(20))


class SlowSink(NullSink):
    """A consumer slower than the camera, as a busy virtual camera would be."""

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        await asyncio.sleep(0.05)
        await super().write(image, frame)


@asynctest
async def test_a_slow_stage_drops_stale_frames_instead_of_building_latency() -> None:
    source = SyntheticSource(320, 240, fps=200, frames=200)
    pipe = Pipeline(source, [SlowSink()], FrameProcessor(SELFIE))
    await pipe.run()
    assert pipe.dropped > 50                      # the camera outran the sink
    assert pipe.frames_out + pipe.dropped <= 200
    m = pipe.metrics()
    # latency stays near one sink period, not the length of a backlog
    assert m["mask_age_ms"] < 500
    assert set(m["stage_ms"]) >= {"read", "segment", "matte", "composite", "sink"}
    assert not pipe.errors
    assert not any(t.name.startswith("live-pipeline") for t in threading.enumerate())


class ClosedAfter(NullSink):
    """An output its user closes after ``n`` frames, as 'q' in the preview window does."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        if self.frames == self.n:
            raise EndOfStream
        await super().write(image, frame)


@asynctest
async def test_an_output_closed_by_its_user_ends_the_pipeline_without_an_error() -> None:
    closing, other = ClosedAfter(3), ClosedAfter(6)
    pipe = Pipeline(SyntheticSource(160, 120, fps=100), [closing, other], FrameProcessor(SELFIE))
    await asyncio.wait_for(pipe.run(), timeout=60)
    assert (closing.frames, other.frames) == (3, 6)  # the other output ran on, then ended too
    assert closing.closed and other.closed
    assert pipe.frames_out == 6 and not pipe.errors


def test_settings_and_prompts_apply_between_frames() -> None:
    processor = FrameProcessor(SELFIE.merged({"background": {"mode": "color",
                                                            "color": "#ff0000"}}))
    image = SyntheticSource(320, 240).render(0)
    red = processor.process(Frame(image, 0, 0.0)).image
    processor.update_settings(processor.settings.merged({"background": {"color": "#0000ff"}}))
    blue = processor.process(Frame(image, 1, 0.1)).image
    corner = (slice(0, 10), slice(0, 10))       # background: the figure is in the middle
    assert red[corner].mean(axis=(0, 1))[2] > 200 and blue[corner].mean(axis=(0, 1))[0] > 200
    with pytest.raises(PromptError, match="sam2"):
        processor.add_prompt(Prompt(points=((10, 10, 1),)))
    processor.reset()
    assert processor.process(Frame(image, 2, 0.2)).image.shape == image.shape


def test_transparent_background_gives_bgra() -> None:
    processor = FrameProcessor(SELFIE.merged({"background": {"mode": "transparent"}}))
    out = processor.process(Frame(SyntheticSource(320, 240).render(0), 0, 0.0))
    assert out.image.shape == (240, 320, 4)
    assert np.allclose(out.image[..., 3] / 255.0, out.alpha, atol=1 / 255 + 1e-6)


def test_clicks_on_the_sam2_engine_are_checked_at_once_and_applied_between_frames() -> None:
    """Random weights (no checkpoint here): this checks the plumbing, not the mask."""
    from live.config import EngineSettings
    from live.segment.auto_prompt import AutoPromptedSAM2

    engine = AutoPromptedSAM2.with_random_weights(
        EngineSettings(name="sam2", device="cpu", image_size=64), precision="fp32")
    processor = FrameProcessor(SELFIE, segmenter=engine)
    image = SyntheticSource(320, 240).render(0)
    processor.process(Frame(image, 0, 0.0))
    with pytest.raises(PromptError, match="outside"):
        processor.add_prompt(Prompt(points=((5000.0, 10.0, 1),)))
    assert engine.mode == "auto"                        # a bad click changes nothing
    processor.add_prompt(Prompt(points=((160.0, 120.0, 1),)))
    assert engine.mode == "auto"                        # queued, not applied mid-frame
    out = processor.process(Frame(image, 1, 0.1))
    assert engine.mode == "user" and out.image.shape == image.shape
    assert engine.stats()["memory_bank_bytes"] > 0


def test_engine_knobs_that_need_no_new_model_reach_the_running_engine() -> None:
    """Re-anchoring thresholds change on the running SAM 2 engine (no reload, tracking
    kept); a knob that shapes the model (the memory's frame cap) asks for a new one."""
    from live.checkpoints import ModelMissingError
    from live.config import EngineSettings
    from live.segment.auto_prompt import AutoPromptedSAM2

    engine_settings = EngineSettings(name="sam2", device="cpu", image_size=64)
    engine = AutoPromptedSAM2.with_random_weights(engine_settings, precision="fp32")
    settings = SELFIE.merged({"engine": {"name": "sam2", "device": "cpu", "image_size": 64}})
    processor = FrameProcessor(settings, segmenter=engine)
    processor.process(Frame(SyntheticSource(320, 240).render(0), 0, 0.0))
    processor.update_settings(settings.merged({"engine": {"reanchor_iou": 0.9,
                                                          "reanchor_frames": 3}}))
    assert processor.segmenter is engine and engine.stream.frame_idx == 0
    assert (engine.settings.reanchor_iou, engine.settings.reanchor_frames) == (0.9, 3)
    with pytest.raises(ModelMissingError):  # a new model is built (and needs a checkpoint)
        processor.update_settings(settings.merged({"engine": {"max_cond_frames": 8}}))
    assert processor.segmenter is engine


def test_pipeline_benchmark_reports_its_ratios_to_the_blend_floor(data_dir) -> None:
    """The design's speed targets are ratios to one full-frame blend in the same run:
    the JSON carries them, and they are what the times say."""
    status, result, stderr = run_bench("bench.pipeline", "--frames", "40", "--size", "640x360")
    assert status == 0, stderr[-2000:]
    assert result["frames"] == 40 and result["dropped"] == 0
    floor = result["blend_floor_ms_p50"]
    assert floor > 0
    assert result["whole_frame_vs_floor"] == pytest.approx(
        result["ms_per_frame_p50"] / floor, rel=0.02)
    assert result["matte_plus_composite_vs_floor"] == pytest.approx(
        result["matte_plus_composite_ms_p50"] / floor, rel=0.02)
