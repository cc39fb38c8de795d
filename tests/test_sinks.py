"""Sinks against the real libraries: pyvirtualcam (with a backend this file
registers), PyAV encoders and decoders, aiortc's MediaStreamError."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from live.frames import Frame
from live.sinks import NullSink, SinkError, VideoOutputTrack


def run(coro):
    return asyncio.run(coro)


def frame_of(image: np.ndarray, index: int, fps: float = 30.0, **meta) -> Frame:
    return Frame(image, index, index / fps, captured=1000.0 + index / fps, meta=meta)


def numbered(index: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A BGR image whose pixels encode its index, so a test can tell frames apart."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (index % 256, 7, 200)
    return img


# --------------------------------------------------------------------------- NullSink


def test_null_sink_counts_frames():
    async def main():
        sink = NullSink()
        for i in range(5):
            await sink.write(numbered(i), frame_of(numbered(i), i))
        await sink.close()
        await sink.close()
        return sink

    sink = run(main())
    assert sink.frames == 5 and sink.last_index == 4 and sink.closed


# --------------------------------------------------------------------------- VideoOutputTrack


def test_track_delivers_in_order_with_pts_from_the_capture_clock():
    async def main():
        track = VideoOutputTrack()
        got = []
        for i in range(3):
            await track.write(numbered(i), frame_of(numbered(i), i))
            got.append(await track.recv())
        return track, got

    track, got = run(main())
    assert track.kind == "video"
    assert [int(f.to_ndarray(format="bgr24")[0, 0, 0]) for f in got] == [0, 1, 2]
    assert all(f.format.name == "bgr24" and (f.width, f.height) == (64, 48) for f in got)
    assert all(f.time_base == fractions.Fraction(1, 90000) for f in got)
    assert [f.pts for f in got] == [0, 3000, 6000]  # 1/30 s apart on a 90 kHz clock
    assert list(track.sent) == [0, 1, 2] and track.dropped == 0


def test_track_newest_wins_and_counts_drops():
    async def main():
        track = VideoOutputTrack()
        for i in range(4):  # nobody is receiving: each write replaces the previous
            await track.write(numbered(i), frame_of(numbered(i), i))
        first = await track.recv()
        pending = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.01)
        assert not pending.done()  # waits for a new frame rather than repeating one
        await track.write(numbered(9), frame_of(numbered(9), 9))
        second = await asyncio.wait_for(pending, 1)
        return track, first, second

    track, first, second = run(main())
    assert track.dropped == 3
    assert first.to_ndarray(format="bgr24")[0, 0, 0] == 3
    assert second.to_ndarray(format="bgr24")[0, 0, 0] == 9
    assert list(track.sent) == [3, 9]


def test_track_carries_the_incoming_webrtc_clock():
    async def main():
        track = VideoOutputTrack()
        tb = fractions.Fraction(1, 90000)
        await track.write(numbered(1), frame_of(numbered(1), 1, pts=123456, time_base=tb))
        return await track.recv()

    out = run(main())
    assert out.pts == 123456 and out.time_base == fractions.Fraction(1, 90000)


def test_track_bgra_becomes_bgr_over_black():
    async def main():
        track = VideoOutputTrack()
        img = np.zeros((4, 6, 4), np.uint8)
        img[..., :3] = 200
        img[:, :3, 3] = 255  # left half opaque, right half transparent
        await track.write(img, frame_of(img, 0))
        return await track.recv()

    out = run(main()).to_ndarray(format="bgr24")
    assert out.shape == (4, 6, 3)
    assert (out[:, :3] == 200).all() and (out[:, 3:] == 0).all()


def test_track_stop_wakes_a_pending_recv_and_later_recvs_fail():
    async def main():
        track = VideoOutputTrack()
        pending = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.01)
        track.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(pending, 1)
        with pytest.raises(MediaStreamError):
            await track.recv()
        await track.write(numbered(0), frame_of(numbered(0), 0))  # peer gone: ignored
        await track.close()  # idempotent
        return track

    track = run(main())
    assert track.readyState == "ended" and track.frames == 0


def test_track_close_wakes_recv():
    async def main():
        track = VideoOutputTrack()
        pending = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.01)
        await track.close()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(pending, 1)

    run(main())


def test_track_rejects_a_non_image():
    async def main():
        track = VideoOutputTrack()
        with pytest.raises(SinkError, match="uint8 BGR"):
            await track.write(np.zeros((4, 4), np.float32), frame_of(numbered(0), 0))

    run(main())
