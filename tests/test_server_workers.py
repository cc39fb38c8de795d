"""Sessions in worker processes: real aiortc peers against ``live serve --workers 2``.

Each session runs in its own worker process (the least-loaded one); the control
server relays settings, prompts and reset to it, and a worker that dies ends
only its own sessions."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import psutil

from bench import cpu_by_role, thread_cpu
from live.io.worker import name_os_threads

from live.serve.client import ControlClient
from live.serve.worker_main import run_loop
from server_helpers import ClipTrack, load_clip, recv_frames, running_server, test_settings, \
    wait_until
from test_server_webrtc import near, reference_regions
from utils import asynctest

GREEN, RED = (0, 255, 0), (0, 0, 255)


async def turns(track, background, bgr, frames: int = 90) -> bool:
    """Whether the background of the frames coming back becomes ``bgr``."""
    for _ in range(frames):
        got = (await recv_frames(track, 1))[0]
        if near(got, bgr)[background].mean() > 0.9:
            return True
    return False


def worker_roles(pids: set[int]) -> dict[str, float]:
    """CPU seconds so far of the workers ``pids``, by the role of each thread."""
    threads = thread_cpu(psutil.Process())
    return cpu_by_role({}, {key: v for key, v in threads.items() if key[0] in pids})


def test_threads_are_named_for_the_os_but_the_process_keeps_its_name():
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="live-peer-0123456789_0")
    thread.start()
    try:
        main_before = Path("/proc/self/comm").read_text()
        name_os_threads()
        task = Path(f"/proc/self/task/{thread.native_id}/comm")
        assert task.read_text().strip() == "live-peer-01234"  # Linux keeps 15 characters
        assert Path("/proc/self/comm").read_text() == main_before
        roles = {role for (pid, tid), (role, _) in thread_cpu(psutil.Process()).items()
                 if tid == thread.native_id}
        assert roles == {"control server"}  # every thread of the server process itself
    finally:
        done.set()
        thread.join()


def test_a_worker_loop_runs_on_uvloop_with_the_executor_threads_asyncio_names():
    async def probe() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        return type(loop).__module__, name

    module, name = run_loop(probe())
    assert module.startswith("uvloop"), module
    assert name.startswith("asyncio_"), name  # bench.capacity's "encoder" role


@asynctest
async def test_two_workers_run_and_steer_their_sessions_independently(clip_path):
    frames = load_clip(clip_path, 1, start=60)
    background, _ = reference_regions(frames[0])
    settings = test_settings(server={"workers": 2}, webrtc={"codec": "H264"},
                             background={"mode": "color", "color": "#00ff00"})
    async with running_server(settings) as server:
        async with ControlClient(server.url) as a, ControlClient(server.url) as b:
            track_a = await a.start_video(ClipTrack(frames))
            track_b = await b.start_video(ClipTrack(frames))
            session_a, session_b = server.sessions[a.session], server.sessions[b.session]
            pids = {session_a.worker.pid, session_b.worker.pid}
            assert len(pids) == 2 and os.getpid() not in pids, \
                "the two sessions should run in two worker processes, not the server's"
            # each worker's loop is uvloop's (a dependency off Windows; see run_loop)
            assert all("uvloop" in Path(f"/proc/{pid}/maps").read_text() for pid in pids)
            # the operator's [webrtc] section reached the workers: their answers put
            # H.264 first (the client offers VP8 first) and carry the bitrate ceiling
            for client in (a, b):
                video = client.answer_sdp.split("m=video ")[1]
                first = video.split()[3]
                assert f"a=rtpmap:{first} H264/" in video and "b=AS:" in video, video
            assert await turns(track_a, background, GREEN)
            assert await turns(track_b, background, GREEN)

            reply = await b.request("settings.set", settings={"background": {"color":
                                                                             "#ff0000"}})
            assert reply["type"] == "ok" and reply["settings"]["background"]["color"] == \
                "#ff0000", reply
            assert await turns(track_b, background, RED), "b's worker did not apply red"
            got = (await recv_frames(track_a, 10))[-1]
            assert near(got, GREEN)[background].mean() > 0.9, "a's session changed too"

            # A refusal in the worker comes back as an error reply; the session lives on.
            reply = await a.request("prompt", points=[[10, 10, 1]])
            assert reply["type"] == "error" and "selfie" in reply["error"], reply
            assert (await a.request("reset"))["type"] == "ok"
            reply = await a.request("settings.set", settings={"matte": {"feather": 9}})
            assert reply["type"] == "ok"
            assert (await a.request("settings.get"))["settings"]["matte"]["feather"] == 9
            assert (await b.request("settings.get"))["settings"]["matte"]["feather"] != 9

            await wait_until(lambda: any(s.get("frames", 0) > 0 and s.get("worker")
                                         for m in a.stats for s in m["sessions"]), 15,
                             "the workers' stats to reach the control socket")
            # server.worker_threads (default 1) reached the workers' engines
            engines = [s["engine"] for m in a.stats for s in m["sessions"] 
                       if s.get("worker") and s.get("frames", 0) > 0]
            assert engines and all(e["threads"] == 1 for e in engines), engines
            # admission prices a frame with the workers' CPU too, not only the server's
            # (which only relays): each worker reports what it used
            await wait_until(lambda: server.workers.cpu_seconds() > 0.5, 15,
                             "the workers to report their CPU")
            before = time.process_time()
            counted = server.workers.admission_load()["cpu_seconds"]()
            assert counted - before >= server.workers.cpu_seconds()
            # each worker shows the OS its threads' names (top -H), so the CPU of a
            # stage can be told from outside: bench.capacity splits it by these roles
            await wait_until(lambda: {"processing", "decoder", "encoder"}
                             <= set(worker_roles(pids)), 15, "the workers' named threads")
            # the OS counts a thread's CPU in 10 ms ticks: a few small frames decode in less
            await wait_until(lambda: all(worker_roles(pids).get(r, 0) > 0 for r in (
                "processing", "decoder", "event loop")), 15, "CPU time on each named stage")
        await wait_until(lambda: not server.sessions, 15, "both sessions to end")
        workers = [w for w in server.workers.slots if w is not None]
        assert all(not w.sessions for w in workers)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in pids), "a worker process outlived the server"


@asynctest
async def test_a_dead_worker_ends_only_its_sessions_and_the_page_can_offer_again(clip_path):
    frames = load_clip(clip_path, 10)
    async with running_server(test_settings(server={"workers": 2})) as server:
        async with ControlClient(server.url) as a, ControlClient(server.url) as b:
            await a.start_video(ClipTrack(frames))
            track_b = await b.start_video(ClipTrack(frames))
            await recv_frames(track_b, 5)
            doomed = server.sessions[a.session].worker
            assert doomed is not server.sessions[b.session].worker
            os.kill(doomed.pid, signal.SIGKILL)

            await wait_until(lambda: a.ended, 15, "the page to hear its session ended")
            assert a.ended[0]["session"] == a.session and "worker" in a.ended[0]["reason"]
            assert a.session not in server.sessions and b.session in server.sessions
            await recv_frames(track_b, 30)  # the other worker's session never stopped
            assert (await a.request("hello"))["type"] == "ok"

            # The page offers again: a worker takes it (the restarted one, or b's).
            track_a = await a.start_video(ClipTrack(frames))
            await recv_frames(track_a, 5)
            assert server.sessions[a.session].worker.alive
            assert server.workers.restarts == 1
            await wait_until(lambda: all(w is not None and w.alive
                                         for w in server.workers.slots), 30,
                             "the dead worker's replacement")
