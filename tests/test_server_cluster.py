"""Sessions on Ray actors: ``live serve --cluster ADDRESS`` against a local Ray head
on 127.0.0.1 that this test starts (no dashboard) and stops (only that one)."""

from __future__ import annotations

import os
import signal

import pytest

from live.serve.client import ControlClient
from ray_head import ray_head
from server_helpers import ClipTrack, load_clip, recv_frames, running_server, test_settings, \
    wait_until
from utils import asynctest

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_head_address():
    with ray_head() as address:
        yield address


@asynctest
async def test_sessions_run_in_ray_actors_and_a_dead_actors_page_starts_again(ray_head_address, clip_path):
    frames = load_clip(clip_path, 10)
    settings = test_settings(server={"workers": 2, "cluster": ray_head_address})
    async with running_server(settings) as server:
        async with ControlClient(server.url) as a, ControlClient(server.url) as b:
            await a.start_video(ClipTrack(frames))
            track_b = await b.start_video(ClipTrack(frames))
            await recv_frames(track_b, 5)
            actor_a = server.sessions[a.session].worker
            actor_b = server.sessions[b.session].worker
            assert actor_a is not actor_b and "ray actor" in actor_a.name
            assert os.getpid() not in (actor_a.pid, actor_b.pid)
            reply = await b.request("settings.set", settings={"matte": {"feather": 9}})
            assert reply["type"] == "ok", reply

            os.kill(actor_a.pid, signal.SIGKILL)
            await wait_until(lambda: a.ended, 30, "the page to hear its actor died")
            assert b.session in server.sessions and a.session not in server.sessions
            await recv_frames(track_b, 20)  # the other actor's session goes on

            track_a = await a.start_video(ClipTrack(frames))  # what the page does
            await recv_frames(track_a, 5)
            assert server.sessions[a.session].worker.alive
    import ray

    assert not ray.is_initialized(), "the server did not leave the cluster"
