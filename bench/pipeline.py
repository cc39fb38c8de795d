"""Whole-pipeline speed and memory: file → selfie → matte → composite → null sink.

    python -m bench.pipeline [--frames 3000] [--size 1280x720] [--source CLIP]
                             [--background blur|#RRGGBB|...]

The file is decoded as fast as the pipeline takes frames (nothing dropped), so
the figures are the cost of processing, not of waiting for a camera.

The design's targets are ratios to a floor measured in the same run (machines
here differ ~2x in absolute speed): one full-frame ``cv2.blendLinear`` of a
frame over a background, the floor of any compositor, timed just before and
just after the pipeline run (``blend_floor_ms_p50``: the mean of the two
medians). ``whole_frame_vs_floor`` (target <= 6) and
``matte_plus_composite_vs_floor`` (target <= 2.5) divide the p50s by it.
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench import DATA, load_frames, report
from bench.quality import median_ms
from live.composite import blend
from live.config import Settings, parse_background
from live.frames import Frame
from live.pipeline import FrameProcessor, Pipeline, StageTimes
from live.io import NullSink
from live.io.files import FileSource



def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Resized:
    """A looping file source scaled to the benchmark size (resize cost counted as read)."""

    def __init__(self, source: FileSource, size: tuple[int, int], frames: int):
        self.source, self.size, self.left = source, size, frames
        self.live, self.fps = False, source.fps

    async def read(self) -> Frame:
        from live.frames import EndOfStream

        if self.left <= 0:
            raise EndOfStream
        self.left -= 1
        frame = await self.source.read()
        if frame.size != self.size:
            frame.image = cv2.resize(frame.image, self.size, interpolation=cv2.INTER_AREA)
        return frame

    async def close(self) -> None:
        await self.source.close()

    def stats(self) -> dict[str, Any]:
        return self.source.stats()


class RssProbe(NullSink):
    """A null sink that samples the process's RSS every ``every`` frames (is memory flat?)."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.samples = every, {}

    async def write(self, image: np.ndarray, frame: Frame) -> None:
        await super().write(image, frame)
        if self.frames % self.every == 0:
            self.samples[self.frames] = round(rss_mb(), 1)


def blend_floor_ms(frame: np.ndarray, count: int = 300) -> float:
    """Median ms of one full-frame blend (``live.composite.blend``: one
    ``cv2.blendLinear``, frame over a background, float alpha), the floor the
    design's speed targets are ratios to."""
    h, w = frame.shape[:2]
    background = np.ascontiguousarray(frame[::-1])
    alpha = np.repeat(np.linspace(0, 1, w, dtype=np.float32)[None, :], h, axis=0)
    return median_ms(lambda i, _: blend(frame, background, alpha), count)


async def run(args: argparse.Namespace) -> dict:
    w, h = (int(v) for v in args.size.lower().split("x"))
    settings = Settings().merged({"engine": {"name": "selfie"},
                                  "background": parse_background(args.background)})
    processor = FrameProcessor(settings)
    processor.segmenter.load(w, h)
    source = Resized(FileSource(args.source, loop=True), (w, h), args.frames)
    sink = RssProbe(every=max(1, args.frames // 6))
    pipeline = Pipeline(source, [sink], processor, name="bench")
    pipeline.times = StageTimes(window=args.frames)
    # warm up (model load, first allocations), then measure from a clean slate
    warm = Pipeline(Resized(FileSource(args.source), (w, h), 30), [NullSink()], processor,
                    owns_processor=False)
    await warm.run()
    still = load_frames(Path(args.source), 1, (w, h))[0]
    floor_before = blend_floor_ms(still)
    rss_start = rss_mb()
    t0 = time.perf_counter()
    await pipeline.run()
    wall = time.perf_counter() - t0
    rss_end = rss_mb()
    floor_ms = (floor_before + blend_floor_ms(still)) / 2
    samples, stages = pipeline.times.samples, pipeline.times.summary()
    matte_composite = float(np.percentile(
        np.array(samples["matte"]) + np.array(samples["composite"]), 50))
    return {
        "width": w, "height": h, "frames": pipeline.frames_out,
        "background": settings.background.mode,
        "ms_per_frame_p50": stages["total"]["p50"],
        "ms_per_frame_p95": stages["total"]["p95"],
        "stage_ms_p50": {k: stages[k]["p50"]
                         for k in ("read", "segment", "matte", "composite", "sink")},
        "matte_plus_composite_ms_p50": round(matte_composite, 2),
        "blend_floor_ms_p50": round(floor_ms, 3),
        "whole_frame_vs_floor": round(stages["total"]["p50"] / floor_ms, 2),
        "matte_plus_composite_vs_floor": round(matte_composite / floor_ms, 2),
        "fps": round(pipeline.frames_out / wall, 1),
        "dropped": pipeline.dropped,
        "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1),
        "rss_mb_by_frame": sink.samples,
        "cpu_count": os.cpu_count(),
        "errors": list(pipeline.errors),
    }


def measure() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--source", default=str(DATA / "clips" / "06_pingpong.mp4"))
    parser.add_argument("--background", default="blur")
    args = parser.parse_args()
    if not Path(args.source).is_file():
        sys.exit(f"source clip {args.source} not found (set LIVE_DATA_DIR or pass --source)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    report(measure)
