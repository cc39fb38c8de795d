"""50 peers come and go: no session, pipeline thread, track or memory stays behind."""

from __future__ import annotations

import gc
import threading

import psutil

from live.serve.client import ControlClient
from server_helpers import (ClipTrack, load_clip, pipeline_threads, recv_frames, running_server,
                            wait_until)
from utils import asynctest

CYCLES = 50


def session_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


@asynctest
async def test_fifty_connect_disconnect_cycles_leak_nothing(clip_path):
    frames = load_clip(clip_path, 8)
    process = psutil.Process()

    async def cycle(server, leave_by_socket: bool) -> None:
        client = ControlClient(server.url)
        await client.connect()
        track = await client.start_video(ClipTrack(frames))
        await recv_frames(track, 2)
        if leave_by_socket:
            await client.close()  # page closed: socket and peer go together
        else:
            await client.stop_video()  # peer connection gone, socket lingers a moment
            await wait_until(lambda: not server.sessions, 20, "the server to drop the peer")
            await client.close()
    async with running_server() as server:
        await cycle(server, True)  # warm-up: codecs, model, thread pools
        await wait_until(lambda: not server.sessions and not any(
            n.startswith(("live-", "video-", "audio-")) for n in session_threads()), 15)
        gc.collect()
        rss_start = process.memory_info().rss
        threads_start = session_threads()

        for i in range(CYCLES):
            await cycle(server, leave_by_socket=i % 2 == 0)
            await wait_until(lambda: not server.sessions and not server.clients, 15,
                             f"cycle {i} to be cleaned up")

        # Idle pool threads (asyncio's default executor, bounded) may stay;
        # every other thread (pipelines, decoders, sinks) must be gone.
        await wait_until(lambda: session_threads() == threads_start, 15,
                         "per-session threads to end")
        assert not pipeline_threads()
        gc.collect()
        rss_end = process.memory_info().rss
        assert (rss_end - rss_start) < 150 * 2**20, \
            f"RSS grew by {(rss_end - rss_start) / 2**20:.0f} MiB over {CYCLES} sessions"
        assert server.received["offer"] == CYCLES + 1
