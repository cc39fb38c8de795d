"""Several SAM 2 sessions on one model: their heavy steps run as one batch.

At 256 px on a CPU a frame's time goes ~50 % to the image encoder, ~25 % to
memory attention and ~10 % to the memory encoder. None of those three has
state of its own: the calls of K sessions that reach the same step with the
same shapes go through it as one batch of K, and each session gets its slice
back. What is per session (its memory bank, which memories a frame reads,
prompts, the mask decoder) stays in the session's own thread and object.
What a batch buys depends on the device: little on this project's 2-core CPU
(~7-10 % less CPU a frame at 4 sessions, see ``bench.stream --sessions``),
where the lanes side by side buy more; more, projected but not measured here,
where one image leaves the device idle between small kernels (a GPU).

Sessions step in their own pipeline threads, and take turns on a compute lane
(``_Lane``): a session holds its lane while it computes and lets go of it
while it waits for a batch. The batches form without a thread of their own:
when every live session of a lane waits on some step, the step of the oldest
waiting call runs for all who wait on it, by whichever thread notices. A
session queued for the lane is on its way; one stalled elsewhere (no frame
from its peer) delays the others by at most ``max_wait_ms`` of idle lane, and
stops counting as live after ``idle_s`` without a step. On the CPU there is a
lane per torch thread, each computing with its share of the threads while
several have sessions, so the lanes never fight for the cores; a GPU has one.

On the CPU in fp32 a session's logits this way equal those of the session run
alone up to the kernels' choice for the batch and the thread count: bit-identical
at 256 px with 4 sessions on one lane, 3e-7 apart at 128 px with 2, 7.5e-7 at 256
px with 4 sessions on two single-threaded lanes (tests/test_sam2_batch.py bounds
it by 1e-3 at 2 and 4 sessions, one lane and two; ``bench.stream --sessions K``
measures it and the gain).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

import torch

from live.segment import model_cache
from live.segment.sam2_stream import (build_model, inference, model_image_size, pick_device,
                                      pick_precision)

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 20.0
DEFAULT_IDLE_S = 1.0

_serving = threading.local()  # .lane, .session: what the current thread computes for


@dataclass
class _Call:
    session: Any
    key: Hashable  # calls with equal keys batch together (same step, same shapes)
    run: Callable[[list[Any]], list[Any]]  # a batch of payloads -> their results
    payload: Any
    thread: int = 0  # the caller's; another thread that runs the call marks it returning
    returning: bool = False
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class SAM2Batcher:
    """A model shared by several sessions: its compute lanes and batching front.

    On the CPU there is a lane per torch thread by default: sessions are
    spread over the lanes, and while more than one lane has sessions each
    computes with its share of the threads (one each on this 2-core machine),
    side by side. One session still gets every thread. Single-threaded torch
    wastes nothing on waking and joining its pool between small ops, and two
    lanes keep both cores busy through the serial steps that a lane with two
    threads leaves half idle. 4 sessions at 256 px, frames per second against
    the same sessions one after the other on both threads (``python -m
    bench.stream --sessions 4 --frames 8 --rounds 5``, 2026-11-30): two lanes
    1.39x, one lane 1.16x, four lanes (no batching) 1.30x. A GPU gets one lane:
    its batches are the gain.
    """

    def __init__(self, model: torch.nn.Module, *, precision: str = "fp32",
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 idle_s: float = DEFAULT_IDLE_S, lanes: int | None = None):
        if max_batch < 1 or max_wait_ms < 0 or idle_s <= 0 or (lanes is not None and lanes < 1):
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0, idle_s > 0 and lanes "
                             f">= 1, got {max_batch}, {max_wait_ms}, {idle_s}, {lanes}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.precision = pick_precision(self.device, precision)
        self.max_batch = int(max_batch)
        self.max_wait = max_wait_ms / 1e3
        self.idle_s = float(idle_s)
        on_cpu = self.device.type == "cpu"
        #: torch threads shared out among the busy lanes (None: not ours to set, a GPU)
        self.threads = torch.get_num_threads() if on_cpu else None
        count = lanes if lanes is not None else (self.threads or 1)
        self.lanes = [_Lane(self) for _ in range(count)]
        self._lane_of: "weakref.WeakKeyDictionary[Any, _Lane]" = weakref.WeakKeyDictionary()
        self._placing = threading.Lock()
        _install_routers(model)

    # ------------------------------------------------------------------ sessions

    def register(self, session: Any) -> None:
        """Count ``session`` as live on its lane: while it steps, the lane's others wait
        for it to batch."""
        self.lane_of(session).touch(session)

    def unregister(self, session: Any) -> None:
        with self._placing:
            lane = self._lane_of.pop(session, None)
        if lane is not None:
            lane.forget(session)

    def lane_of(self, session: Any) -> "_Lane":
        """The session's lane: placed once, on the lane with the fewest sessions."""
        with self._placing:
            lane = self._lane_of.get(session)
            if lane is None:
                lane = min(self.lanes, key=lambda ln: sum(v is ln for v in self._lane_of.values()))
                self._lane_of[session] = lane
            return lane

    @contextlib.contextmanager
    def serving(self, session: Any) -> Iterator[None]:
        """Hold ``session``'s lane; its batched steps go through that lane, computed with
        the lane's share of the torch threads."""
        lane = self.lane_of(session)
        with lane.holding(session):
            # OpenMP keeps a thread count per thread: this one computes with its share.
            # torch also keeps the count new threads start from: put back as it was.
            threads = self._threads_per_lane()
            if threads is not None and threads != self.threads:
                torch.set_num_threads(threads)
            try:
                yield
            finally:
                if threads is not None and threads != self.threads:
                    torch.set_num_threads(self.threads)

    def _threads_per_lane(self) -> int | None:
        if self.threads is None:
            return None
        now = time.monotonic()
        busy = sum(1 for lane in self.lanes if lane.live(now))
        return max(1, self.threads // max(1, busy))

    @property
    def counts(self) -> dict[str, list[int]]:
        """step -> [batches, calls], over all lanes."""
        out: dict[str, list[int]] = {}
        for lane in self.lanes:
            for step, (batches, calls) in list(lane.counts.items()):
                total = out.setdefault(step, [0, 0])
                total[0] += batches
                total[1] += calls
        return out

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"sessions": sum(len(lane.sessions()) for lane in self.lanes),
                "active": sum(len(lane.live(now)) for lane in self.lanes),
                "lanes": len(self.lanes), "threads_per_lane": self._threads_per_lane(),
                "mean_batch": {step: round(calls / batches, 2)
                               for step, (batches, calls) in self.counts.items()}}

    # ------------------------------------------------------------------ steps

    def encode(self, image: torch.Tensor) -> dict[str, Any]:
        """``model.forward_image`` of a 1xCxSxS image, batched with its lane's others'."""
        lane = getattr(_serving, "lane", None)
        if lane is None or lane.batcher is not self:
            lane = self.lanes[0]  # called outside ``serving``: a batch of its own
        return lane.submit(("encoder", tuple(image.shape), image.dtype), image,
                           functools.partial(encode_batch, self.model))


class _Lane:
    """One compute lane: its sessions take turns on it, one computing at a time.

    The batches form without a thread of their own: when every live session of
    the lane waits on some step, the step of the oldest waiting call runs for
    all who wait on it, by whichever thread notices.
    """

    def __init__(self, batcher: SAM2Batcher):
        self.batcher = batcher
        self._cond = threading.Condition(threading.RLock())
        self._queue: list[_Call] = []
        self._seen: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()
        self._seen_lock = threading.Lock()
        # id(session) -> its threads queued for the lane, or woken with their call done
        self._wanting: Counter = Counter()
        self._idle_since = time.monotonic()  # when the lane last stopped computing
        self.counts: dict[str, list[int]] = {}  # step -> [batches, calls]

    @contextlib.contextmanager
    def holding(self, session: Any) -> Iterator[None]:
        self.touch(session)
        self._want(session, +1)
        with self._cond:
            self._want(session, -1)
            before = getattr(_serving, "lane", None), getattr(_serving, "session", None)
            _serving.lane, _serving.session = self, session
            try:
                yield
            finally:
                _serving.lane, _serving.session = before
                self.touch(session)
                self._idle_since = time.monotonic()

    def touch(self, session: Any) -> None:
        with self._seen_lock:
            self._seen[session] = time.monotonic()

    def forget(self, session: Any) -> None:
        with self._seen_lock:
            self._seen.pop(session, None)
        with self._cond:
            self._cond.notify_all()

    def sessions(self) -> list[Any]:
        with self._seen_lock:
            return list(self._seen)

    def live(self, now: float) -> set[int]:
        """The sessions a batch of this lane waits for: stepping lately, queued or on
        their way back."""
        with self._seen_lock:
            live = {id(s) for s, t in self._seen.items() if now - t < self.batcher.idle_s}
            live |= set(self._wanting)
        return live | {id(c.session) for c in list(self._queue)}

    def submit(self, key: Hashable, payload: Any,
               run: Callable[[list[Any]], list[Any]]) -> Any:
        session = getattr(_serving, "session", None)
        call = _Call(session, key, run, payload, threading.get_ident())
        with self._cond:
            self._queue.append(call)
            self._idle_since = time.monotonic()  # this thread stops computing
            while not call.done:
                group = self._ready_group()
                if group is None:
                    self._cond.wait(self._timeout())
                    continue
                self._run(group)
                self._idle_since = time.monotonic()
            if call.returning:  # back on the lane
                self._want(session, -1)
        if call.error is not None:
            raise call.error
        return call.result

    # ------------------------------------------------------------------ internals

    def _want(self, session: Any, n: int) -> None:
        with self._seen_lock:
            self._wanting[id(session)] += n
            self._wanting += Counter()  # drop zero counts

    def _ready_group(self) -> list[_Call] | None:
        """The calls to run now, or None to wait for more sessions."""
        if not self._queue:
            return None
        now = time.monotonic()
        oldest = self._queue[0]
        waiting = {id(c.session) for c in self._queue}
        with self._seen_lock:
            on_its_way = bool(self._wanting)
        ripe = (waiting >= self.live(now)
                or (not on_its_way and now - self._idle_since >= self.batcher.max_wait))
        for c in self._queue:
            group = [d for d in self._queue if d.key == c.key][:self.batcher.max_batch]
            if len(group) == self.batcher.max_batch or (ripe and c is oldest):
                return group
        return None

    def _timeout(self) -> float:
        """Until the idle lane's wait runs out, or the next live session goes idle."""
        now = time.monotonic()
        idle_s = self.batcher.idle_s
        with self._seen_lock:
            idle_at = [t + idle_s for t in self._seen.values() if t + idle_s > now]
        ends = idle_at + [self._idle_since + self.batcher.max_wait]
        return max(0.0, min(ends, default=now + idle_s) - now) + 1e-4

    def _run(self, group: list[_Call]) -> None:
        for c in group:
            self._queue.remove(c)
        try:
            with inference(self.batcher.device.type, self.batcher.precision):
                results = group[0].run([c.payload for c in group])
        except BaseException as exc:  # each waiter gets the error, none hangs
            results, error = [None] * len(group), exc
        else:
            error = None
            step = str(group[0].key[0])
            batches, calls = self.counts.get(step, (0, 0))
            self.counts[step] = [batches + 1, calls + len(group)]
        me = threading.get_ident()
        for c, r in zip(group, results):
            c.result, c.error, c.done = r, error, True
            if c.thread != me:  # its thread must take the lane back: it is on its way
                c.returning = True
                self._want(c.session, +1)
        self._cond.notify_all()


# ---------------------------------------------------------------- batched model steps

def encode_batch(model: torch.nn.Module, images: list[torch.Tensor]) -> list[dict[str, Any]]:
    """``model.forward_image`` of several 1xCxSxS images as one batch; each its own output."""
    if len(images) == 1:
        return [model.forward_image(images[0])]
    out = model.forward_image(torch.cat(images))
    return [_take(out, i, dim=0) for i in range(len(images))]


def _take(out: Any, i: int, dim: int) -> Any:
    """Sample i (along ``dim``) of a batched output, as its own contiguous 1-batch tensors."""
    if isinstance(out, torch.Tensor):
        return out.narrow(dim, i, 1).clone()
    if isinstance(out, dict):
        return {k: _take(v, i, dim) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_take(v, i, dim) for v in out)
    return out


def _shapes(*tensors: torch.Tensor) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


class _MemoryAttention:
    """``model.memory_attention`` (sequence-first tensors: the batch is dim 1).

    The batch is built batch-first and handed over transposed, so that the
    module's own transpose gives it the same contiguous layout as one session's.
    """

    def __init__(self, inner: torch.nn.Module):
        self.inner = inner

    def __call__(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        lane = getattr(_serving, "lane", None)
        if lane is None or isinstance(curr, torch.Tensor) or curr_pos is None:
            return self.inner(curr=curr, memory=memory, curr_pos=curr_pos,
                              memory_pos=memory_pos, num_obj_ptr_tokens=num_obj_ptr_tokens)
        args = (curr[0], curr_pos[0], memory, memory_pos)
        key = ("memory_attention", _shapes(*args), int(num_obj_ptr_tokens))
        return lane.submit(key, (args, num_obj_ptr_tokens), self._run)

    def _run(self, payloads: list) -> list[torch.Tensor]:
        def stack(j: int) -> torch.Tensor:
            return torch.cat([p[0][j].transpose(0, 1) for p in payloads]).transpose(0, 1)

        curr, curr_pos, memory, memory_pos = (stack(j) for j in range(4))
        out = self.inner(curr=[curr], memory=memory, curr_pos=[curr_pos], memory_pos=memory_pos,
                         num_obj_ptr_tokens=payloads[0][1])
        batch_first = out.transpose(0, 1)
        return [batch_first[i:i + 1].clone().transpose(0, 1) for i in range(len(payloads))]


class _MemoryEncoder:
    """``model.memory_encoder`` (batch-first)."""

    def __init__(self, inner: torch.nn.Module):
        self.inner = inner

    def __call__(self, pix_feat, masks, skip_mask_sigmoid=False):
        lane = getattr(_serving, "lane", None)
        if lane is None:
            return self.inner(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        key = ("memory_encoder", _shapes(pix_feat, masks), bool(skip_mask_sigmoid))
        return lane.submit(key, (pix_feat, masks, skip_mask_sigmoid), self._run)

    def _run(self, payloads: list) -> list[dict[str, Any]]:
        if len(payloads) == 1:
            return [self.inner(*payloads[0][:2], skip_mask_sigmoid=payloads[0][2])]
        out = self.inner(torch.cat([p[0] for p in payloads]), torch.cat([p[1] for p in payloads]),
                         skip_mask_sigmoid=payloads[0][2])
        return [_take(out, i, dim=0) for i in range(len(payloads))]


def _install_routers(model: torch.nn.Module) -> None:
    """Route the model's stateless steps through the batcher of the calling thread.

    Set in the instance ``__dict__``, the routers shadow the submodules for
    SAM 2's own calls while ``state_dict``, ``.to()`` and ``eval()`` still see
    the real modules. A thread not serving a batcher calls the module directly.
    """
    for name, router in (("memory_attention", _MemoryAttention),
                         ("memory_encoder", _MemoryEncoder)):
        if name not in vars(model):
            object.__setattr__(model, name, router(model._modules[name]))


def shared_batcher(config: str, checkpoint: str | Path | None, *, image_size: int | None = None,
                   device: str = "auto", max_cond_frames: int = 4, precision: str = "auto",
                   compile_encoder: bool = False) -> SAM2Batcher:
    """The process's one model (and batcher) for these settings: loaded once, shared.

    The key holds everything the built model depends on, ``max_cond_frames``
    included because SAM 2 reads it from the model itself.
    """
    if checkpoint is None:  # random weights depend on a seed the key does not hold
        raise ValueError("a shared SAM 2 model needs a checkpoint")
    dev = pick_device(device)
    size = model_image_size(image_size, dev)
    prec = pick_precision(dev, precision)
    key = ("sam2", config, str(Path(checkpoint).resolve()), size, str(dev), int(max_cond_frames),
           prec, bool(compile_encoder))

    def build() -> SAM2Batcher:
        model = build_model(config, checkpoint, size, dev)
        model.max_cond_frames_in_attn = int(max_cond_frames)
        return SAM2Batcher(model, precision=prec)

    return model_cache.shared(key, build)
