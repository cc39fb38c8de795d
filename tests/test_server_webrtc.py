"""WebRTC loopback: a real aiortc peer sends clip frames to ``live serve`` and
checks what comes back, then leaves and checks nothing of its session remains."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack

from live.config import EngineSettings
from live.segment.selfie import SelfieSegmenter
from live.serve.client import ControlClient
from server_helpers import (ClipTrack, load_clip, pipeline_threads, recv_frames, running_server,
                            test_settings, wait_until)
from utils import asynctest


def reference_regions(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sure background, sure subject) by the selfie engine's own mask, shrunk by 6 px
    so the feathered edge and codec ringing fall outside both."""
    h, w = frame.shape[:2]
    alpha = cv2.resize(SelfieSegmenter(EngineSettings(name="selfie")).step(frame), (w, h))
    kernel = np.ones((13, 13), np.uint8)
    background = cv2.erode((alpha < 0.1).astype(np.uint8), kernel).astype(bool)
    subject = cv2.erode((alpha > 0.9).astype(np.uint8), kernel).astype(bool)
    return background, subject


def near(image: np.ndarray, bgr: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(image.astype(np.int16) - np.array(bgr, np.int16)) <= tol).all(axis=2)


@asynctest
async def test_background_replaced_then_session_released(clip_path):
    # One real frame held still, so every frame that comes back can be compared
    # with the mask of exactly what was sent.
    frames = load_clip(clip_path, 1, start=60)
    background, subject = reference_regions(frames[0])
    assert background.mean() > 0.2 and subject.mean() > 0.015, "clip frame lacks a clear subject"
    settings = test_settings(background={"mode": "color", "color": "#00ff00"})
    async with running_server(settings) as server:
        client = ControlClient(server.url)
        await client.connect()
        track = await client.start_video(ClipTrack(frames), audio=AudioStreamTrack())
        got = (await recv_frames(track, 40))[-1]
        assert got.shape == frames[0].shape
        green = near(got, (0, 255, 0))
        assert green[background].mean() > 0.9, "background did not turn green"
        assert green[subject].mean() < 0.05, "the subject was replaced too"
        diff = np.abs(got.astype(np.int16) - frames[0].astype(np.int16)).mean(axis=2)
        assert np.median(diff[subject]) < 20, "the subject's pixels did not come back"

        # Audio offered → the same audio comes straight back.
        audio = await asyncio.wait_for(client.remote["audio"].recv(), 10)
        assert audio.sample_rate > 0

        # A settings change reaches the running pipeline within a second or so.
        reply = await client.request("settings.set",
                                     settings={"background": {"color": "#ff0000"}})
        assert reply["type"] == "ok", reply
        assert reply["settings"]["background"]["color"] == "#ff0000"
        for _ in range(60):
            got = (await recv_frames(track, 1))[0]
            if near(got, (0, 0, 255))[background].mean() > 0.9:
                break
        else:
            pytest.fail("background never turned red after settings.set")

        session = server.sessions[client.session]
        assert session.pipeline.running and pipeline_threads()
        assert session.pipeline.metrics()["frames"] > 0
        assert session.pipeline.metrics()["picture"] == "I420"  # the decoded picture, as it came

        # The peer leaves (socket and connection): nothing of its session remains.
        await client.close()
        await wait_until(lambda: not server.sessions and not pipeline_threads()
                         and not session.pipeline.running and not server.clients, 15,
                         "session teardown")
        assert session.closed
        assert session.output.readyState == "ended"
        assert session.pc.connectionState == "closed"


@asynctest
async def test_peer_connection_closing_ends_session_while_socket_stays(clip_path):
    """A peer whose video connection goes away is cleaned up even if its control
    socket stays open, and the socket can start a fresh session afterwards."""
    frames = load_clip(clip_path, 10)
    async with running_server() as server:
        async with ControlClient(server.url) as client:
            track = await client.start_video(ClipTrack(frames))
            await recv_frames(track, 5)
            first = client.session
            await client.stop_video()
            await wait_until(lambda: first not in server.sessions and not pipeline_threads(),
                             40, "the server to notice the closed peer connection")
            hello = await client.request("hello")
            assert hello["type"] == "ok" and hello["session"] is None

            track = await client.start_video(ClipTrack(frames))
            await recv_frames(track, 5)
            assert client.session != first and list(server.sessions) == [client.session]
        await wait_until(lambda: not server.sessions and not pipeline_threads(), 15,
                         "teardown after the socket closed")


@asynctest
async def test_second_offer_replaces_first_session(clip_path):
    frames = load_clip(clip_path, 10)
    async with running_server() as server:
        async with ControlClient(server.url) as client:
            track = await client.start_video(ClipTrack(frames))
            await recv_frames(track, 3)
            first, old_pc = server.sessions[client.session], client.pc
            track = await client.start_video(ClipTrack(frames))  # new offer, old pc open
            assert first.closed and list(server.sessions) == [client.session]
            await old_pc.close()
            await recv_frames(track, 3)


VANISHING_PEER = """
import asyncio, sys
from aiortc.mediastreams import VideoStreamTrack
from live.serve.client import ControlClient

async def main():
    client = ControlClient(sys.argv[1])
    await client.connect()
    track = await client.start_video(VideoStreamTrack())
    for _ in range(3):
        await track.recv()
    print("streaming", client.session, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@asynctest
async def test_a_peer_that_vanishes_is_cleaned_up():
    """A browser that crashes says goodbye to nobody: kill -9 the peer's process."""
    import sys
    async with running_server() as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", VANISHING_PEER, server.url,
            stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.startswith(b"streaming"), line
            session = line.split()[1].decode()
            assert session in server.sessions and pipeline_threads()
        finally:
            proc.kill()
            await proc.wait()
        await wait_until(lambda: not server.sessions and not pipeline_threads()
                         and not server.clients, 45, "the vanished peer's cleanup")


@asynctest
async def test_offers_racing_for_the_last_video_slot_admit_one(clip_path):
    """Answering an offer takes a while (the model loads): two offers arriving together
    must not both pass the session limit."""
    frames = load_clip(clip_path, 10)
    async with running_server(max_peers=1) as server:
        async with ControlClient(server.url) as a, ControlClient(server.url) as b:
            results = await asyncio.gather(a.start_video(ClipTrack(frames)),
                                           b.start_video(ClipTrack(frames)),
                                           return_exceptions=True)
            refused = [r for r in results if isinstance(r, Exception)]
            assert len(refused) == 1 and "at capacity" in str(refused[0])
            assert len(server.sessions) == 1
        await wait_until(lambda: not server.sessions and not pipeline_threads(), 15,
                         "teardown")
