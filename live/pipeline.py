"""The asyncio loop that drives source → segment → matte → composite → sinks.

Two rules keep latency flat:

* Frames are never queued. The source writes into a one-slot ``Mailbox``
  whose newest frame wins; a frame replaced before it was processed is counted
  as dropped. (A file that is not paced is the exception: nothing is dropped,
  the reader simply waits for the slot to empty.)
* Blocking work runs off the event loop, in one worker thread per pipeline,
  so the loop stays free for WebRTC, the control socket and other pipelines.

``FrameProcessor`` holds the per-stream state (segmenter, matte, compositor)
and is the synchronous core shared by ``live run``, ``live serve`` and the
benchmarks. ``Pipeline`` is the asynchronous shell around it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Sequence, TypeVar

import numpy as np

from live.composite import Compositor
from live.config import Settings, needs_new_engine
from live.frames import I420, EndOfStream, Frame, Pyramid
from live.io.base import takes_i420
from live.io.worker import Worker
from live.matte import Matte
from live.segment import Prompt, PromptError, Segmenter, create_segmenter
from live.subjects import SubjectSelector

log = logging.getLogger("live.pipeline")

STAGES = ("read", "segment", "matte", "composite", "sink", "total")
T = TypeVar("T")


class Mailbox(Generic[T]):
    """One slot. ``put`` replaces what is there (a drop); ``get`` waits for a value."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._filled = asyncio.Event()
        self._emptied = asyncio.Event()
        self._emptied.set()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        if self._item is not None:
            self.dropped += 1
        self._item = item
        self._emptied.clear()
        self._filled.set()

    async def put_when_empty(self, item: T) -> None:
        """Lossless hand-over: wait until the consumer took the previous item."""
        while self._item is not None and not self._closed:
            await self._emptied.wait()
        self.put(item)

    async def get(self) -> T:
        while self._item is None:
            if self._closed:
                raise EndOfStream
            self._filled.clear()
            await self._filled.wait()
        item, self._item = self._item, None
        self._emptied.set()
        return item

    def close(self) -> None:
        """Wake the consumer; it gets what is left, then EndOfStream."""
        self._closed = True
        self._filled.set()
        self._emptied.set()


class StageTimes:
    """Rolling per-stage durations (ms) for the status line and the control panel."""

    def __init__(self, window: int = 300):
        self.samples = {stage: deque(maxlen=window) for stage in STAGES}

    def add(self, stage: str, ms: float) -> None:
        self.samples[stage].append(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.samples.items():
            if values:
                p50, p95 = np.percentile(np.fromiter(values, float), [50, 95])
                out[stage] = {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}
        return out


@dataclass
class Processed:
    image: np.ndarray | I420  # in the frame's layout (BGRA in transparent mode)
    alpha: np.ndarray
    frame: Frame
    timings: dict[str, float] = field(default_factory=dict)


class FrameProcessor:
    """segment → subject selection → matte → composite, for one stream.

    ``process`` runs on the pipeline's worker thread; settings changes and
    prompts arrive from the event loop. A lock makes each change land between
    two frames, and everything a change needs (a new engine, a background
    image) is built before the lock is taken, so a bad value leaves the
    running state untouched.
    """

    def __init__(self, settings: Settings, segmenter: Segmenter | None = None):
        self.settings = settings
        self.segmenter = segmenter or create_segmenter(settings.engine)
        self.selector = SubjectSelector(settings.engine.subjects)
        self.matte = Matte(settings.matte)
        self.compositor = Compositor(settings.background)
        self.passthrough = False  # return frames untouched (latency baselines)
        self._lock = threading.Lock()
        self._prompts: list[Prompt] = []
        self._reset_requested = False

    def process(self, frame: Frame) -> Processed:
        with self._lock:
            if self.passthrough:
                opaque = np.broadcast_to(np.float32(1.0), frame.size[::-1])  # no 3.7 MB fill
                return Processed(frame.image, opaque, frame)
            if self._reset_requested:
                self.segmenter.reset()
                self.selector.reset()
                self.matte.reset()
                self._reset_requested = False
            for prompt in self._prompts:
                try:
                    self.segmenter.add_prompt(prompt)
                except PromptError as exc:  # checked when queued; the frame size changed since
                    log.warning("prompt dropped: %s", exc)
            self._prompts.clear()
            t0 = time.perf_counter()
            pyramid = Pyramid.of(frame.image)  # its smaller copies, made once for all stages
            alpha = self.selector.apply(self.segmenter.step(pyramid))
            t1 = time.perf_counter()
            alpha, boxes = self.matte.apply(alpha, pyramid)
            t2 = time.perf_counter()
            image = self.compositor.apply(pyramid, alpha, boxes)
            t3 = time.perf_counter()
        timings = {"segment": (t1 - t0) * 1e3, "matte": (t2 - t1) * 1e3,
                   "composite": (t3 - t2) * 1e3}
        return Processed(image, alpha, frame, timings)

    def update_settings(self, settings: Settings) -> None:
        """Swap to ``settings`` (already validated) between two frames."""
        old = self.settings
        segmenter = None
        if needs_new_engine(old.engine, settings.engine):
            segmenter = create_segmenter(settings.engine)  # may raise: nothing swapped yet
        if settings.background != old.background:
            # loads and checks a new image/video first (tens of ms), then swaps atomically;
            # safe beside a frame in progress, so frames keep flowing meanwhile
            self.compositor.update(settings.background)
        replaced = None
        with self._lock:
            if segmenter is not None:
                replaced, self.segmenter = self.segmenter, segmenter
                self.matte.reset()
            elif settings.engine != old.engine:  # knobs the engine reads frame by frame
                self.segmenter.settings = settings.engine
            if settings.engine.subjects != old.engine.subjects:
                self.selector = SubjectSelector(settings.engine.subjects)
            if settings.matte != old.matte:
                self.matte.update(settings.matte)
            self.settings = settings
        if replaced is not None:
            replaced.close()  # after the swap: the frame in progress has finished with it

    def add_prompt(self, prompt: Prompt) -> None:
        """Queue a click for the next frame; a prompt the engine refuses raises PromptError now."""
        self.segmenter.check_prompt(prompt)
        with self._lock:
            self._prompts.append(prompt)

    def reset(self) -> None:
        with self._lock:
            self._prompts.clear()
            self._reset_requested = True

    def close(self) -> None:
        self.compositor.close()  # a video background's decoder thread and file
        self.segmenter.close()


class Pipeline:
    """Reads a source, processes on a worker thread, writes to sinks, keeps metrics."""

    def __init__(self, source: Any, sinks: Sequence[Any], processor: FrameProcessor,
                 *, name: str = "pipeline", owns_processor: bool = True):
        self.source = source
        self.sinks = list(sinks)
        self.processor = processor
        self.name = name
        self.owns_processor = owns_processor
        self.lossless = not getattr(source, "live", True)  # a file: process every frame
        self.times = StageTimes()
        self.frames_out = 0
        self.errors: deque[str] = deque(maxlen=20)
        # What made the output incomplete (a source or sink that failed, a file not
        # finalised): `live run` exits non-zero with these, never "success".
        self.failures: list[str] = []
        self._mailbox: Mailbox[Frame] = Mailbox()
        self._stop = asyncio.Event()
        self._worker = Worker(f"live-{name}")
        self._started = 0.0
        self._out_stamps: deque[float] = deque(maxlen=120)
        self._latency: deque[float] = deque(maxlen=300)
        self.running = False

    async def run(self) -> None:
        """Until the source ends or ``stop()``; sinks are always closed, errors recorded."""
        self.running = True
        self._started = time.monotonic()
        reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-read")
        try:
            await self._process_loop()
        finally:
            self._mailbox.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for closer in [self.source.close, *(s.close for s in self.sinks)]:
                try:
                    await closer()
                except Exception as exc:  # a close must not hide the others
                    self._error(f"closing: {exc}", failed=True)
            self._worker.shutdown(wait=True)
            if self.owns_processor:
                self.processor.close()
            self.running = False

    def stop(self) -> None:
        self._stop.set()
        self._mailbox.close()

    async def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = await self.source.read()
                self.times.add("read", (time.perf_counter() - t0) * 1e3)
                if self.lossless:
                    await self._mailbox.put_when_empty(frame)
                else:
                    self._mailbox.put(frame)
        except EndOfStream:
            pass
        except Exception as exc:
            self._error(f"source: {exc}", failed=True)
        finally:
            self._mailbox.close()

    async def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = await self._mailbox.get()
            except EndOfStream:
                return
            try:
                result = await self._worker.run(self.processor.process, frame)
            except Exception as exc:
                log.exception("processing frame %d failed", frame.index)
                self._error(f"processing: {exc}")
                continue
            for stage, ms in result.timings.items():
                self.times.add(stage, ms)
            t0 = time.perf_counter()
            processing_ms = sum(result.timings.values())
            failed = False
            # an I420 picture is converted once, and only if a sink wants BGR
            image = result.image
            as_bgr = functools.cache(lambda: image.to_bgr() if isinstance(image, I420) else image)
            for sink in list(self.sinks):
                try:
                    await sink.write(image if takes_i420(sink) else as_bgr(), frame)
                except EndOfStream:  # an output its user closed (the preview window)
                    self.sinks.remove(sink)
                    await _quiet_close(sink)
                except Exception as exc:
                    self._error(f"sink {type(sink).__name__}: {exc}", failed=True)
                    self.sinks.remove(sink)
                    await _quiet_close(sink)
                    failed = True
            if not self.sinks:
                if failed:
                    self._error("no output left; stopping")
                return
            now = time.monotonic()
            sink_ms = (time.perf_counter() - t0) * 1e3
            self.times.add("sink", sink_ms)
            self.times.add("total", processing_ms + sink_ms)
            self._latency.append((now - frame.captured) * 1e3)
            self._out_stamps.append(now)
            self.frames_out += 1

    def _error(self, message: str, failed: bool = False) -> None:
        log.error("%s: %s", self.name, message)
        self.errors.append(message)
        if failed and len(self.failures) < 20:
            self.failures.append(message)

    @property
    def dropped(self) -> int:
        return self._mailbox.dropped

    def metrics(self) -> dict[str, Any]:
        stamps = self._out_stamps
        fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and \
            stamps[-1] > stamps[0] else 0.0
        latency = float(np.median(self._latency)) if self._latency else None
        return {
            "fps": round(fps, 1),
            "frames": self.frames_out,
            "dropped": self.dropped,
            "stage_ms": self.times.summary(),
            "mask_age_ms": None if latency is None else round(latency, 1),
            "engine": self.processor.segmenter.stats(),
            "errors": list(self.errors),
            "running": self.running,
            **self.source.stats(),
        }


async def _quiet_close(sink: Any) -> None:
    try:
        await sink.close()
    except Exception:
        pass
