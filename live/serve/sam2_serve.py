"""SAM 2 on a cluster: one Ray Serve deployment runs the model for every session.

With ``live serve --cluster ... --engine sam2`` each session's worker (a Ray
actor, live.serve.cluster) keeps the selfie model and the auto-prompter, but
its SAM 2 stream is a ``RemoteStream``: per frame it sends the frame resized
to the model's input (SxS uint8, as the official loader resizes it) and any
new prompts to the ``SAM2Replica`` deployment, and gets back each object's
low-res logits (S/4 x S/4), from which it makes the alpha as the local engine
does. A replica holds the model once and each session's ``StreamingSAM2``
(its bounded memory bank), keyed by session; frames of several sessions that
arrive together go through the image encoder as one ``@serve.batch``, the
rest of each step (memory attention, decoder, memory encoder) runs per
session on the same compute lane, so a session's logits equal those of the
local engine (tests/test_sam2_serve.py).

Session affinity. Ray 2.60 has it: ``handle.options(session_id=...)`` and
``ray.serve.experimental.consistent_hash_router.ConsistentHashRouter``, which
hashes the session id onto a ring of replicas. The ring alone moves sessions
whenever the replica set changes: when a dead replica's replacement joins,
some of the surviving replicas' sessions hash to it and lose their memory
banks (measured: ``StickyHashRouter`` docstring). ``StickyHashRouter``
therefore keeps the ring for first placement and remembers where each session
went, as long as that replica lives. A router lives in the calling process
(one handle, so one router, per deployment and process); every request of a
session comes from its one session worker, so that router's memory is the
whole truth about the session.

Losing the memory bank (a replica died, or dropped a session idle for
``IDLE_S``): the replica answers ``lost`` (or the call fails), the stream's
``restarts`` grows, and the auto-prompter goes back to auto mode and
re-anchors from the selfie mask on the next frame (live.segment.auto_prompt);
until a live replica answers (the routers hear of a death within seconds),
the selfie mask stands in, and the page needs no reload.

Only imported with ``--cluster``: it imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from live.config import EngineSettings, Settings, SettingsError
from live.frames import I420, Pyramid
from live.segment import Prompt, PromptError
from live.segment.sam2_batch import encode_batch
from live.segment.sam2_stream import (StreamingSAM2, alpha_from_logits, build_model,
                                      check_prompt_fits, inference, model_image_size,
                                      pick_device, pick_precision, resize_frame)

log = logging.getLogger(__name__)

DEPLOYMENT = "sam2"
#: how long the first frame of a batch waits for other sessions' frames: as the local
#: batcher's max wait. ``bench.stream --serve 4`` on the loaded 2-core CPU: mean batch
#: 1.66 at 5 ms, 3.2 at 20 ms (the sessions' answers go out together, but their next
#: frames come back some ms apart)
BATCH_WAIT_S = 0.02
#: the longest a session's answer waits for the rest of its encoder batch
BATCH_HOLD_S = 2.0
#: a session's memory bank is dropped after this long without a frame
IDLE_S = 60.0
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Deployed:
    """What a session worker needs to use a deployment: its app, and the engine
    settings it was built for (a session asking for another model runs its own)."""

    app: str
    engine: EngineSettings
    image_size: int
    cpus: float  # what its replicas reserve, all together

    def serves(self, engine: EngineSettings) -> bool:
        fields = ("sam2_model", "checkpoint", "image_size", "device", "max_cond_frames",
                  "compile")
        return all(getattr(engine, f) == getattr(self.engine, f) for f in fields)


# --------------------------------------------------------------------------- the replica


class _Batch:
    """The sessions of one encoder batch, until each has finished its step."""

    def __init__(self, size: int):
        self.left = size
        self.done = asyncio.Event()

    def arrive(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


@dataclass
class _Held:
    stream: StreamingSAM2
    last: float = field(default_factory=time.monotonic)  # its latest frame


class SAM2Replica:
    """One copy of the model and the memory banks of the sessions routed to it."""

    def __init__(self, config: str, checkpoint: str, image_size: int, device: str,
                 max_cond_frames: int, max_batch: int, precision: str = "auto"):
        dev = pick_device(device)
        self.model = build_model(config, checkpoint, image_size, dev)
        self.max_cond_frames = int(max_cond_frames)
        self.precision = pick_precision(dev, precision)
        self.sessions: dict[str, _Held] = {}
        # one thread computes: torch's intra-op threads already use the cores, and
        # the event loop stays free to take the next frames into the next batch
        self.lane = ThreadPoolExecutor(1, thread_name_prefix="sam2-lane")
        self.encoder_batches = [0, 0]  # batches, frames
        self.name = f"pid {os.getpid()} #{secrets.token_hex(3)}"
        self._encode.set_max_batch_size(int(max_batch))
        self._sweeper: asyncio.Task[None] | None = None

    async def step(self, session: str, frame: Any, prompts: list[Prompt],
                   fresh: bool) -> dict[str, Any]:
        """One frame of ``session``; ``fresh``: start its memory bank anew (a new or
        reset session, or one re-anchoring). ``{"lost": True}`` if this replica does
        not hold the session's memory bank (it never did, or dropped it when idle)."""
        self._start_sweeper()
        if fresh:
            self.sessions[session] = _Held(StreamingSAM2(
                self.model, max_cond_frames=self.max_cond_frames, precision=self.precision))
        held = self.sessions.get(session)
        if held is None:
            return {"lost": True, "replica": self.name}
        held.last = time.monotonic()
        stream = held.stream
        for prompt in prompts:
            try:
                stream.add_prompt(prompt)
            except PromptError as exc:  # checked by the session already: a frame-size change
                log.warning("dropped a prompt of session %s: %s", session, exc)
        loop = asyncio.get_running_loop()
        if not stream.needs_features():
            await loop.run_in_executor(self.lane, stream.feed, frame, None)
        else:
            backbone, batch = await self._encode(stream.preprocess(frame))
            try:
                await loop.run_in_executor(self.lane, stream.feed, frame, backbone)
            finally:
                batch.arrive()
            # one whose request was cancelled meanwhile never arrives: wait a bounded time
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(batch.done.wait(), BATCH_HOLD_S)
        held.last = time.monotonic()
        return {"logits": {k: v.float().cpu().numpy() for k, v in
                           stream.low_res_logits().items()},
                "scores": stream.object_scores(), "frame_idx": stream.frame_idx,
                "stats": stream.stats(), "replica": self.name, "pid": os.getpid(),
                "sessions": len(self.sessions),
                "encoder_mean_batch": round(self.encoder_batches[1]
                                            / max(1, self.encoder_batches[0]), 2)}

    async def close(self, session: str) -> None:
        self.sessions.pop(session, None)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _encode(self, images: list[torch.Tensor]) -> list[tuple[dict[str, Any], _Batch]]:
        """The image encoder over the frames of every session that arrived together.

        The sessions of a batch are answered together, once each has finished its
        step: so they send their next frames together, and those batch again
        (answered one by one, they drift out of phase: mean batch 1.07 with 2
        sessions on the CPU, 2.0 answered together; ``bench.stream --serve 2``)."""
        loop = asyncio.get_running_loop()
        outs = await loop.run_in_executor(self.lane, self._encode_now, images)
        batch = _Batch(len(images))
        return [(out, batch) for out in outs]

    def _encode_now(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        self.encoder_batches[0] += 1
        self.encoder_batches[1] += len(images)
        with inference(images[0].device.type, self.precision):
            return encode_batch(self.model, images)

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Drop the memory banks of sessions gone quiet (closed without a word, or whose
        worker died): nothing outlives ``IDLE_S`` without a frame."""
        while True:
            await asyncio.sleep(IDLE_S / 4)
            now = time.monotonic()
            for session, held in list(self.sessions.items()):
                if now - held.last > IDLE_S:
                    del self.sessions[session]


class StickyHashRouter(ConsistentHashRouter):
    """Ray's consistent-hash router, sticky: a session stays on the replica it was
    first routed to while that replica lives.

    Measured (``python -m bench.serve_affinity``: 2 CPU replicas, 24 sessions, one
    replica killed, Serve starts a replacement; four runs): with the plain ring,
    3 to 8 of the 12 to 18 sessions of the surviving replica moved to the
    replacement once routers heard of it, losing their memory banks; with this
    router none did (of 5 to 13).
    The price: the dead replica's sessions, re-placed while only the survivor
    was up, stay there; new sessions spread over the ring again. Strict
    (``num_fallback_replicas=0``): a busy replica makes its sessions wait
    rather than land where their bank is not.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._placed: dict[str, Any] = {}  # session id -> ReplicaID

    async def choose_replicas(self, candidate_replicas: list[Any],
                              pending_request: Any = None) -> list[list[Any]]:
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if not key:
            return await super().choose_replicas(candidate_replicas, pending_request)
        pending_request.routing_context.should_backoff = True
        close = pending_request.metadata.call_method == "close"
        placed = self._replicas.get(self._placed.pop(key, None) if close
                                    else self._placed.get(key))
        if placed is None:  # new, or its replica is gone: the ring decides
            ranks = await super().choose_replicas(candidate_replicas, pending_request)
            if not ranks or close:
                return ranks
            placed = ranks[0][0]
            self._placed[key] = placed.replica_id
        return [[placed]]


# --------------------------------------------------------------------------- deploying


def deploy(settings: Settings, *, precision: str = "auto",
           router: type | None = None) -> Deployed:
    """Start the SAM 2 deployment for these engine settings on the joined cluster:
    one replica per GPU (or ``server.sam2_replicas``; 1 on a CPU-only cluster).
    ``precision`` as ``StreamingSAM2``'s (the local engine's is auto too);
    ``router``: ``StickyHashRouter`` unless a benchmark compares another."""
    import ray
    from ray.serve.config import ProxyLocation, RequestRouterConfig

    from live.checkpoints import require_sam2_checkpoint, sam2_config_name

    engine = settings.engine
    checkpoint = require_sam2_checkpoint(engine)  # on this machine: the same path on the nodes
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = engine.device if engine.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda" and not gpus:
        raise SettingsError("--device cuda: the Ray cluster has no GPU")
    if device == "mps":
        raise SettingsError("--device mps cannot be shared over a Ray cluster; use cpu or cuda")
    replicas = settings.server.sam2_replicas or (gpus if device == "cuda" else 1)
    size = model_image_size(engine.image_size, torch.device(device))
    max_batch = settings.server.sam2_max_batch
    app = f"live-sam2-{os.getpid()}-{secrets.token_hex(3)}"
    serve.start(proxy_location=ProxyLocation.Disabled)
    deployment = serve.deployment(
        SAM2Replica, name=DEPLOYMENT, num_replicas=replicas,
        # every session has at most one frame in flight: a batch is at most this many
        max_ongoing_requests=max_batch,
        ray_actor_options={"num_cpus": settings.server.sam2_replica_cpus,
                           "num_gpus": 1 if device == "cuda" else 0},
        request_router_config=RequestRouterConfig(
            request_router_class=router or StickyHashRouter,
            request_router_kwargs={"num_fallback_replicas": 0}))
    serve.run(deployment.bind(sam2_config_name(engine.sam2_model), str(checkpoint), size,
                              device, engine.max_cond_frames, max_batch, precision),
              name=app, route_prefix=None)
    return Deployed(app, engine, size, replicas * settings.server.sam2_replica_cpus)


def undeploy(deployed: Deployed) -> None:
    """Delete our app; stop Serve on the cluster if no other app runs there."""
    with _handles_lock:
        _handles.pop(deployed.app, None)
    try:
        serve.delete(deployed.app)
        if not serve.status().applications:
            serve.shutdown()
    except Exception as exc:  # the cluster is gone already
        log.warning("could not remove the SAM 2 deployment %s: %s", deployed.app, exc)


# --------------------------------------------------------------------------- a session's side


#: one handle per deployment in a process: its options() copies share one router, which
#: holds where every session of this process was placed
_handles: dict[str, Any] = {}
_handles_lock = threading.Lock()


class RemoteStream:
    """What the auto-prompter needs of a ``StreamingSAM2``, with the memory bank on a replica."""

    name = "sam2"

    def __init__(self, deployed: Deployed):
        self.session = uuid.uuid4().hex
        with _handles_lock:  # the first options() sets the shared handle's router up
            handle = _handles.get(deployed.app)
            if handle is None:
                handle = serve.get_deployment_handle(DEPLOYMENT, app_name=deployed.app)
                _handles[deployed.app] = handle
            self._step = handle.options(session_id=self.session, method_name="step")
            self._close = handle.options(session_id=self.session, method_name="close")
        self.image_size = deployed.image_size
        self.restarts = 0  # memory banks lost with a replica (the engine re-anchors)
        self._lock = threading.Lock()
        self._video_hw: tuple[int, int] | None = None
        self._remote: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """The next frame starts a new memory bank (no call now: it goes with the frame)."""
        with self._lock:
            self._pending: list[Prompt] = []
            self._forget()

    def _forget(self) -> None:
        """No memory bank on a replica any more: the next frame starts one (frame -1)."""
        self._scores: dict[int, float] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self._frame_idx = -1

    @property
    def frame_idx(self) -> int:
        return self._frame_idx

    @property
    def obj_ids(self) -> list[int]:
        return list(self._scores)

    def object_scores(self) -> dict[int, float]:
        return dict(self._scores)

    def validate(self, prompt: Prompt) -> None:
        check_prompt_fits(prompt, *(self._video_hw or (None, None)))

    def add_prompt(self, prompt: Prompt) -> None:
        self.validate(prompt)
        with self._lock:
            self._pending.append(prompt)

    def step(self, frame: np.ndarray | I420 | Pyramid) -> np.ndarray:
        """Alpha at image_size x image_size, as ``StreamingSAM2.step``; zeros (and one
        more restart) when the replica lost the memory bank."""
        resized = resize_frame(Pyramid.of(frame).image, self.image_size)
        with self._lock:
            self._video_hw = resized.video_hw
            prompts, self._pending = self._pending, []
            fresh = self._frame_idx < 0  # no replica holds a memory bank of ours
        t0 = time.perf_counter()
        try:
            reply = self._step.remote(self.session, resized, prompts, fresh).result(
                timeout_s=CALL_TIMEOUT_S)
        except Exception as exc:  # the replica died, or is gone from the ring, or hangs
            log.warning("SAM 2 replica call failed (%s): re-anchoring", type(exc).__name__)
            reply = {"lost": True}
        with self._lock:
            if reply.get("lost"):
                self._forget()
                self.restarts += 1
                return np.zeros((self.image_size, self.image_size), np.float32)
            self._scores, self._frame_idx = reply["scores"], reply["frame_idx"]
            self._remote = {**reply["stats"], "replica": reply["replica"],
                            "replica_pid": reply["pid"],
                            "replica_sessions": reply["sessions"],
                            "encoder_mean_batch": reply["encoder_mean_batch"],
                            "remote_ms": round((time.perf_counter() - t0) * 1e3, 1)}
            self._logits = {k: torch.tensor(v) for k, v in reply["logits"].items()}
            logits = list(self._logits.values())
        with torch.inference_mode():
            return alpha_from_logits(logits, self.image_size)

    def low_res_logits(self) -> dict[int, torch.Tensor]:
        """Each object's logits on the last frame, at the decoder's resolution (S/4)."""
        return dict(self._logits)

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "image_size": self.image_size, **self._remote,
                "frames": self._frame_idx + 1, "objects": self.obj_ids,
                "restarts": self.restarts}

    def close(self) -> None:
        """Free the memory bank on the replica now (else it goes after ``IDLE_S``)."""
        if self._frame_idx >= 0:  # a replica holds our memory bank
            try:
                self._close.remote(self.session)
            except Exception:  # the replica or the cluster is gone: nothing left to free
                pass


# --------------------------------------------------------------------------- in a session worker

def use_deployment(deployed: Deployed) -> None:
    """Make this process's sam2 engines use the deployment (for the settings it serves)."""
    from live.segment import use_remote_sam2

    use_remote_sam2(lambda engine: RemoteStream(deployed) if deployed.serves(engine) else None)
