"""Several SAM 2 sessions on one model: their heavy steps run as one batch.

At 256 px on a CPU a frame's time goes ~50 % to the image encoder, ~25 % to
memory attention and ~10 % to the memory encoder. None of those three has
state of its own: the calls of K sessions that reach the same step with the
same shapes go through it as one batch of K, and each session gets its slice
back. What is per session (its memory bank, which memories a frame reads,
prompts, the mask decoder) stays in the session's own thread and object.
What a batch buys depends on the device: little on this project's 2-core CPU
(~7-10 % less CPU a frame at 4 sessions, see ``bench.stream --sessions``);
more, projected but not measured here, where one image leaves the device idle
between small kernels (a GPU).

Sessions step in their own pipeline threads, and take turns on one compute
lane per model (the lock of ``SAM2Batcher``): a session holds the lane while
it computes and lets go of it while it waits for a batch. So the threads never
fight for the cores (torch's intra-op threads already use them all), and the
batches form without a thread of their own: when every live session waits on
some step, the step of the oldest waiting call runs for all who wait on it,
by whichever thread notices. A session queued for the lane is on its way; one
stalled elsewhere (no frame from its peer) delays the others by at most
``max_wait_ms`` of idle lane, and stops counting as live after ``idle_s``
without a step.

On the CPU in fp32 a session's logits this way equal those of the session run
alone up to the kernels' choice for the batch: bit-identical at 256 px with 4
sessions, 3e-7 apart at 128 px with 2 (tests/test_sam2_batch.py bounds it by
1e-3 at 2 and 4 sessions; ``bench.stream --sessions K`` measures it and the gain).
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

_serving = threading.local()  # .batcher, .session: what the current thread computes for


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
    """A model shared by several sessions, with its compute lane and batching front."""

    def __init__(self, model: torch.nn.Module, *, precision: str = "fp32",
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 idle_s: float = DEFAULT_IDLE_S):
        if max_batch < 1 or max_wait_ms < 0 or idle_s <= 0:
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0 and idle_s > 0, got "
                             f"{max_batch}, {max_wait_ms}, {idle_s}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.precision = pick_precision(self.device, precision)
        self.max_batch = int(max_batch)
        self.max_wait = max_wait_ms / 1e3
        self.idle_s = float(idle_s)
        self._lane = threading.Condition(threading.RLock())
        self._queue: list[_Call] = []
        self._seen: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()
        self._seen_lock = threading.Lock()
        # id(session) -> its threads queued for the lane, or woken with their call done
        self._wanting: Counter = Counter()
        self._idle_since = time.monotonic()  # when the lane last stopped computing
        self.counts: dict[str, list[int]] = {}  # step -> [batches, calls]
        _install_routers(model)

    # ------------------------------------------------------------------ sessions

    def register(self, session: Any) -> None:
        """Count ``session`` as live: while it steps, the others wait for it to batch."""
        self._touch(session)

    def unregister(self, session: Any) -> None:
        with self._seen_lock:
            self._seen.pop(session, None)
        with self._lane:
            self._lane.notify_all()

    @contextlib.contextmanager
    def serving(self, session: Any) -> Iterator[None]:
        """Hold the compute lane for ``session``; its batched steps go through this batcher."""
        self._touch(session)
        self._want(session, +1)
        with self._lane:
            self._want(session, -1)
            before = getattr(_serving, "batcher", None), getattr(_serving, "session", None)
            _serving.batcher, _serving.session = self, session
            try:
                yield
            finally:
                _serving.batcher, _serving.session = before
                self._touch(session)
                self._idle_since = time.monotonic()

    def stats(self) -> dict[str, Any]:
        with self._seen_lock:
            sessions = len(self._seen)
        return {"sessions": sessions, "active": len(self._live(time.monotonic())),
                "mean_batch": {step: round(calls / batches, 2)
                               for step, (batches, calls) in self.counts.items()}}

    # ------------------------------------------------------------------ steps

    def encode(self, image: torch.Tensor) -> dict[str, Any]:
        """``model.forward_image`` of a 1xCxSxS image, batched with the other sessions'."""
        return self._submit(("encoder", tuple(image.shape), image.dtype), image,
                            functools.partial(encode_batch, self.model))

    def _submit(self, key: Hashable, payload: Any,
                run: Callable[[list[Any]], list[Any]]) -> Any:
        session = getattr(_serving, "session", None)
        call = _Call(session, key, run, payload, threading.get_ident())
        with self._lane:
            self._queue.append(call)
            self._idle_since = time.monotonic()  # this thread stops computing
            while not call.done:
                group = self._ready_group()
                if group is None:
                    self._lane.wait(self._timeout())
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

    def _touch(self, session: Any) -> None:
        with self._seen_lock:
            self._seen[session] = time.monotonic()

    def _live(self, now: float) -> set[int]:
        with self._seen_lock:
            live = {id(s) for s, t in self._seen.items() if now - t < self.idle_s}
            live |= set(self._wanting)
        return live | {id(c.session) for c in self._queue}

    def _ready_group(self) -> list[_Call] | None:
        """The calls to run now, or None to wait for more sessions."""
        if not self._queue:
            return None
        now = time.monotonic()
        oldest = self._queue[0]
        waiting = {id(c.session) for c in self._queue}
        with self._seen_lock:
            on_its_way = bool(self._wanting)
        ripe = (waiting >= self._live(now)
                or (not on_its_way and now - self._idle_since >= self.max_wait))
        for c in self._queue:
            group = [d for d in self._queue if d.key == c.key][:self.max_batch]
            if len(group) == self.max_batch or (ripe and c is oldest):
                return group
        return None

    def _timeout(self) -> float:
        """Until the idle lane's wait runs out, or the next live session goes idle."""
        now = time.monotonic()
        with self._seen_lock:
            idle_at = [t + self.idle_s for t in self._seen.values() if t + self.idle_s > now]
        ends = idle_at + [self._idle_since + self.max_wait]
        return max(0.0, min(ends, default=now + self.idle_s) - now) + 1e-4

    def _run(self, group: list[_Call]) -> None:
        for c in group:
            self._queue.remove(c)
        try:
            with inference(self.device.type, self.precision):
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
        self._lane.notify_all()



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
        batcher = getattr(_serving, "batcher", None)
        if batcher is None or isinstance(curr, torch.Tensor) or curr_pos is None:
            return self.inner(curr=curr, memory=memory, curr_pos=curr_pos,
                              memory_pos=memory_pos, num_obj_ptr_tokens=num_obj_ptr_tokens)
        args = (curr[0], curr_pos[0], memory, memory_pos)
        key = ("memory_attention", _shapes(*args), int(num_obj_ptr_tokens))
        return batcher._submit(key, (args, num_obj_ptr_tokens), self._run)

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
        batcher = getattr(_serving, "batcher", None)
        if batcher is None:
            return self.inner(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        key = ("memory_encoder", _shapes(pix_feat, masks), bool(skip_mask_sigmoid))
        return batcher._submit(key, (pix_feat, masks, skip_mask_sigmoid), self._run)

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
