"""Sources on real video: file decoding, looping, pacing, and a camera that disappears."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from live.config import SettingsError, SourceSettings
from live.frames import EndOfStream
from live.io import SourceError, open_source
from live.io.files import FileSource
from live.io.synthetic import SyntheticSource
from live.io.webcam import WebcamSource
from utils import asynctest


async def read_n(source, n: int) -> list:
    return [await source.read() for _ in range(n)]


@asynctest
async def test_file_source_reads_every_frame_in_order(clip_path: Path) -> None:
    src = FileSource(clip_path)
    frames = []
    try:
        while True:
            frames.append(await src.read())
    except EndOfStream:
        ended = True
    await src.close()
    assert ended and len(frames) == 230  # the clip's frame count (see shared/data/README)
    assert frames[0].image.shape == (720, 1280, 3) and frames[0].image.dtype == np.uint8
    assert [f.index for f in frames] == list(range(230))
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))


@asynctest
async def test_looping_file_keeps_time_increasing(clip_path: Path) -> None:
    src = FileSource(clip_path, loop=True)
    frames = await read_n(src, 240)
    await src.close()
    assert len(frames) == 240
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    # the frame after the loop point is the clip's first frame again
    assert np.array_equal(frames[230].image, frames[0].image)


@asynctest
async def test_realtime_file_is_paced_like_a_camera(clip_path: Path) -> None:
    src = FileSource(clip_path, realtime=True)
    t0 = time.monotonic()
    await read_n(src, 13)
    elapsed = time.monotonic() - t0
    await src.close()
    assert src_live(clip_path)
    assert elapsed >= 12 / 24 * 0.9  # 24 fps clip: 12 intervals take ~0.5 s


def src_live(clip_path: Path) -> bool:
    return FileSource(clip_path, realtime=True).live and not FileSource(clip_path).live


@asynctest
async def test_synthetic_source_is_deterministic_and_ends_when_asked() -> None:
    src = SyntheticSource(320, 240, fps=200, frames=3)
    frames = await read_n(src, 3)
    with pytest.raises(EndOfStream):
        await src.read()
    assert frames[0].image.shape == (240, 320, 3)
    assert np.array_equal(frames[1].image, SyntheticSource(320, 240).render(1))
    assert not np.array_equal(frames[0].image, frames[1].image)  # the figure moves


def test_open_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a camera"):
        open_source(SourceSettings(spec=str(tmp_path / "nope.mp4")))
    with pytest.raises(SettingsError, match="webcam:N"):
        open_source(SourceSettings(spec="webcam:front"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match="cannot read video"):
        open_source(SourceSettings(spec=str(broken)))


@asynctest
async def test_camera_that_disappears_is_reported_and_reopened(clip_path: Path,
                                                             tmp_path: Path) -> None:
    """OpenCV opens a file like a device: delete it mid-stream, then bring it back."""
    device = tmp_path / "cam.mp4"
    shutil.copy(clip_path, device)
    cam = WebcamSource(str(device), 1280, 720, 30)
    cam.BACKOFF = (0.05, 0.1)
    first = await read_n(cam, 230)            # the whole "device"
    device.unlink()                           # unplugged
    statuses = []

    async def replug() -> None:
        while cam.failures < 3:
            await asyncio.sleep(0.02)
            statuses.append(cam.status)
        shutil.copy(clip_path, device)        # plugged back in

    plug = asyncio.create_task(replug())
    again = await asyncio.wait_for(cam.read(), timeout=30)
    await plug
    failures = cam.failures
    await cam.close()
    assert len(first) == 230
    assert any("lost" in s or "cannot open" in s for s in statuses)
    assert again.image.shape == (720, 1280, 3) and again.index == 230
    assert failures == 0  # reset once frames flow again


@asynctest
async def test_a_camera_that_never_opens_fails_at_once(tmp_path: Path) -> None:
    """No retry loop when there is no camera at all: the user gets the fix immediately."""
    cam = WebcamSource(str(tmp_path / "no-such-camera"), 640, 480, 30)
    try:
        with pytest.raises(SourceError, match="live doctor"):
            await asyncio.wait_for(cam.read(), timeout=10)
    finally:
        await cam.close()


def test_a_file_without_video_is_refused_and_closed(tmp_path: Path) -> None:
    """An audio-only file is refused with a clear error by the source and the video
    background alike, and neither keeps the file open."""
    import av
    import psutil

    from live.composite import BackgroundError, Compositor
    from live.config import BackgroundSettings

    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    process = psutil.Process()
    before = process.num_fds()
    for _ in range(10):
        with pytest.raises(SourceError, match="no video stream"):
            FileSource(path)
        with pytest.raises(BackgroundError, match="no video stream"):
            Compositor(BackgroundSettings(mode="video", video=str(path)))
    assert process.num_fds() == before
