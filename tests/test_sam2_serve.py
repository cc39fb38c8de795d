"""SAM 2 as a Ray Serve deployment (live.serve.sam2_serve) on a local head of our own.

Two CPU replicas of a randomly initialised model (saved as a checkpoint, so the
production loading path runs). A session's logits through the deployment must
equal the local engine's, alone and with another session batched beside it;
killing the replica holding a session makes that session re-anchor on the other
replica from its next frame, while sessions on the surviving replica keep their
memory banks, also after Serve has replaced the dead replica. Last, ``live serve
--cluster`` with the sam2 engine deploys its own replica and a browser-like peer's
session gets its masks from there.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest
import torch

from bench.sam2_fixture import random_sam2
from live.config import Settings
from live.segment import Prompt
from live.segment.sam2_stream import StreamingSAM2
from ray_head import ray_head
from live.serve.client import ControlClient
from server_helpers import ClipTrack, load_clip, recv_frames, running_server, test_settings, \
    wait_until
from test_sam2_batch import max_diff as frame_diff
from test_sam2_stream import inside_point, make_clip
from utils import asynctest

pytestmark = pytest.mark.ray

SIZE = 128
FRAMES = 4
TOLERANCE = 1e-3  # the bound; measured here: ~2e-7 (the replicas run one torch thread)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_sam2(SIZE)


@pytest.fixture(scope="module")
def deployed(model, tmp_path_factory):
    """Our head, the driver joined to it, and the deployment with two replicas (the head
    counts 4 CPUs: those two, a session worker and a replica of the server's own)."""
    checkpoint = tmp_path_factory.mktemp("sam2") / "random.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    settings = Settings().merged({
        "engine": {"name": "sam2", "checkpoint": str(checkpoint), "image_size": SIZE,
                   "device": "cpu"},
        "server": {"sam2_replicas": 2, "sam2_max_batch": 4}})
    with ray_head(num_cpus=4) as address:
        import ray

        from live.serve import cluster, sam2_serve

        cluster.join(address)
        result = sam2_serve.deploy(settings, precision="fp32")
        try:
            yield result, settings, address
        finally:
            if not ray.is_initialized():  # a server left the cluster
                cluster.join(address)
            sam2_serve.undeploy(result)
            ray.shutdown()


def play(stream, frames, events):
    """Each frame's per-object low-res logits; ``events``: frame -> prompts before it."""
    out = []
    for i, frame in enumerate(frames):
        for prompt in events.get(i, ()):
            stream.add_prompt(prompt)
        stream.step(frame)
        out.append({k: v.clone() for k, v in stream.low_res_logits().items()})
    return out


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(frame_diff(x, y) for x, y in zip(a, b))


def test_sessions_through_the_deployment_equal_the_local_engine(deployed, model, data_dir,
                                                                tmp_path):
    from live.serve.sam2_serve import RemoteStream

    d, _, _ = deployed
    clips = [make_clip(data_dir, tmp_path, seq, FRAMES) for seq in ("hike", "lucia")]
    events = [{0: [Prompt(obj_id=1, points=(inside_point(c.masks[0]),))],
               2: [Prompt(obj_id=2, mask=c.masks[2])]} for c in clips]  # a mask travels too
    alone = [play(StreamingSAM2(model, precision="fp32"), c.frames, ev)
             for c, ev in zip(clips, events)]
    assert any(float(x[1].max()) > -1000 for x in alone[0])  # real logits compared

    one = play(RemoteStream(d), clips[0].frames, events[0])
    assert max_diff(one, alone[0]) <= TOLERANCE

    streams = [RemoteStream(d) for _ in clips]
    together: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(
        i, play(streams[i], clips[i].frames, events[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, ref in zip(together, alone):
        assert max_diff(got, ref) <= TOLERANCE
    assert all(s.restarts == 0 and s.stats()["frames"] == FRAMES for s in streams)


def test_a_killed_replica_costs_only_its_sessions_their_memory(deployed, clip_path):
    from live.segment.auto_prompt import AutoPromptedSAM2
    from live.serve.sam2_serve import RemoteStream

    d, settings, _ = deployed
    frames = load_clip(clip_path, 12)
    # sessions placed by the router; a frame with no prompt costs no encoder pass
    streams = [RemoteStream(d) for _ in range(16)]
    for s in streams:
        s.step(frames[0])
    pids = {s.stats()["replica"]: s.stats()["replica_pid"] for s in streams}
    assert len(pids) == 2, "the router put every session on one replica"
    doomed, spared = sorted(pids)
    on = {name: [s for s in streams if s.stats()["replica"] == name] for name in pids}
    a = AutoPromptedSAM2(settings.engine, stream=on[doomed][0])
    b = AutoPromptedSAM2(settings.engine, stream=on[spared][0])
    for frame in frames[:2]:
        a.step(frame)
        b.step(frame)
    assert a.stream.obj_ids == [1] == b.stream.obj_ids  # anchored by the selfie model

    os.kill(pids[doomed], signal.SIGKILL)
    restarted = None
    deadline = time.monotonic() + 60
    for i in range(10_000):
        frame = frames[2 + i % 10]
        before = a.stream.restarts
        alpha = a.step(frame)
        assert alpha.shape == (SIZE, SIZE)
        if a.stream.restarts != before:  # no memory bank this frame: the selfie mask stands in
            assert float(alpha.max()) > 0.5
        b.step(frame)
        if a.stream.restarts and a.stream.obj_ids == [1] and a.stream.frame_idx >= 1:
            restarted = a.stream.stats()["replica"]
            break
        assert time.monotonic() < deadline, "the session did not re-anchor on a live replica"
    assert restarted != doomed and a.anchors["lost"] >= 1
    assert b.stream.restarts == 0 and b.stream.stats()["replica"] == spared

    _wait_for_replicas(d.app, 2)  # Serve replaced the dead one: the ring changed again
    deadline = time.monotonic() + 60
    while True:  # until our router (one per process) has heard of the replacement
        newcomer = RemoteStream(d)
        newcomer.step(frames[0])
        newcomer.close()
        if newcomer.stats()["replica"] not in pids:
            break
        assert time.monotonic() < deadline, "no session was placed on the new replica"
        time.sleep(0.2)
    for s in streams[1:]:
        if s is not b.stream:
            s.step(frames[0])
    for s in on[spared]:
        assert s.restarts == 0, "a session of the surviving replica lost its memory bank"
    assert all(s.restarts == 1 for s in on[doomed][1:])
    for s in streams:
        s.close()


def _wait_for_replicas(app: str, n: int, timeout: float = 60) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    while True:
        states = serve.status().applications[app].deployments["sam2"].replica_states
        if states.get("RUNNING", 0) == n and len(states) == 1:
            return
        assert time.monotonic() < deadline, f"replicas: {states}"
        time.sleep(0.5)


@asynctest
async def test_live_serve_on_a_cluster_runs_sam2_on_its_deployment(deployed, clip_path):
    _, base, address = deployed
    frames = load_clip(clip_path, 10)
    settings = test_settings(engine=dataclasses.asdict(base.engine),
                             server={"workers": 1, "cluster": address, "sam2_replicas": 1})
    async with running_server(settings) as server:
        async with ControlClient(server.url) as client:
            track = await client.start_video(ClipTrack(frames))
            await recv_frames(track, 5)
            await wait_until(lambda: any(s.get("engine", {}).get("replica_pid")
                                         for m in client.stats for s in m["sessions"]), 30,
                             "a stats push naming the session's SAM 2 replica")
            assert "ray actor" in server.sessions[client.session].worker.name
    from live.serve.cluster import _on_leave

    assert not _on_leave, "the server left its deployment behind"

