"""Whole-pipeline speed and memory: file → selfie → matte → composite → null sink.

    python -m bench.pipeline [--frames 3000] [--size 1280x720] [--source CLIP]
                             [--background blur|#RRGGBB|...]

The file is decoded as fast as the pipeline takes frames (nothing dropped), so
the figures are the cost of processing, not of waiting for a camera. Prints
one JSON object as its last line.
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

from bench import DATA, report
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
    rss_start = rss_mb()
    t0 = time.perf_counter()
    await pipeline.run()
    wall = time.perf_counter() - t0
    rss_end = rss_mb()
    samples, stages = pipeline.times.samples, pipeline.times.summary()
    return {
        "width": w, "height": h, "frames": pipeline.frames_out,
        "background": settings.background.mode,
        "ms_per_frame_p50": stages["total"]["p50"],
        "ms_per_frame_p95": stages["total"]["p95"],
        "stage_ms_p50": {k: stages[k]["p50"]
                         for k in ("read", "segment", "matte", "composite", "sink")},
        "matte_plus_composite_ms_p50": round(float(np.percentile(
            np.array(samples["matte"]) + np.array(samples["composite"]), 50)), 2),
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
