"""Session affinity of the SAM 2 deployment when a replica dies and Serve replaces it.

    python -m bench.serve_affinity [--sessions 24] [--settle-s 30]

On a Ray head of its own (``ray.init``, stopped at the end), for Ray's plain
consistent-hash router and for ``live.serve.sam2_serve.StickyHashRouter``: two
CPU replicas of a 64 px random-weight SAM 2, N sessions placed by the router
(one frame each, no prompt: no encoder pass), one replica killed, then every
session steps once a second for ``--settle-s`` seconds, by which Serve has
started a replacement and the routers have heard of it (checked).
Counts the sessions of the surviving replica that lost their memory bank (a
router moved them). Then, with the sticky router, the re-anchoring of a sam2
engine (selfie-prompted, on a real clip) whose replica is killed: frames
without a memory bank, and seconds from the kill to the first frame tracked
on a live replica. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import DATA, load_frames, report
from bench.sam2_fixture import random_sam2


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--settle-s", type=float, default=30.0)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1
    import ray
    from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

    from live.serve import cluster
    from live.serve.sam2_serve import StickyHashRouter

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model": random_sam2(64).state_dict()}, checkpoint)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, runtime_env=cluster._runtime_env())
        try:
            for name, router in (("ring", ConsistentHashRouter), ("sticky", StickyHashRouter)):
                results[name] = one_kill(str(checkpoint), router, args.sessions, args.settle_s)
            results["reanchor"] = reanchor(str(checkpoint))
        finally:
            ray.shutdown()
    return {"replicas": 2, "sessions": args.sessions, **results}


def reanchor(checkpoint: str) -> dict[str, Any]:
    from live.segment.auto_prompt import AutoPromptedSAM2
    from live.serve.sam2_serve import RemoteStream, deploy, undeploy

    frames = load_frames(DATA / "clips" / "06_pingpong.mp4", 12, (640, 360))
    settings = _settings(checkpoint)
    deployed = deploy(settings, precision="fp32")
    try:
        engine = AutoPromptedSAM2(settings.engine, stream=RemoteStream(deployed))
        for frame in frames[:3]:
            engine.step(frame)
        doomed = engine.stream.stats()["replica"]
        os.kill(engine.stream.stats()["replica_pid"], signal.SIGKILL)
        t0, steps = time.monotonic(), 0
        while not (engine.stream.restarts and engine.stream.obj_ids == [1]):
            if steps >= 100:
                raise RuntimeError("the session did not re-anchor in 100 frames")
            engine.step(frames[3 + steps % 9])
            steps += 1
        assert engine.stream.stats()["replica"] != doomed
        return {"frames_without_memory_bank": engine.stream.restarts,
                "seconds_to_tracking_again": round(time.monotonic() - t0, 2)}
    finally:
        undeploy(deployed)


def _settings(checkpoint: str) -> Any:
    from live.config import Settings

    return Settings().merged({
        "engine": {"name": "sam2", "checkpoint": checkpoint, "image_size": 64, "device": "cpu"},
        "server": {"sam2_replicas": 2}})


def one_kill(checkpoint: str, router: type, n: int, settle_s: float) -> dict[str, Any]:
    from ray import serve

    from live.serve.sam2_serve import RemoteStream, deploy, undeploy

    deployed = deploy(_settings(checkpoint), precision="fp32", router=router)
    frame = np.zeros((72, 128, 3), np.uint8)
    try:
        streams = [RemoteStream(deployed) for _ in range(n)]
        for s in streams:
            s.step(frame)
        placed = [s.stats()["replica"] for s in streams]
        pids = {s.stats()["replica"]: s.stats()["replica_pid"] for s in streams}
        doomed = sorted(pids)[0]
        os.kill(pids[doomed], signal.SIGKILL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < settle_s:
            for s in streams:
                s.step(frame)
            time.sleep(1.0)
        states = serve.status().applications[deployed.app].deployments["sam2"].replica_states
        if states != {"RUNNING": 2}:
            raise RuntimeError(f"Serve has not replaced the replica yet: {states}")
        survivors = [s for s, where in zip(streams, placed) if where != doomed]
        final = {s.stats()["replica"] for s in streams}
        for s in streams:
            s.close()
        return {"on_killed_replica": n - len(survivors), "survivors": len(survivors),
                "survivors_that_lost_their_bank": sum(s.restarts > 0 for s in survivors),
                "replicas_in_use_after": len(final)}
    finally:
        undeploy(deployed)


if __name__ == "__main__":
    report(measure)
