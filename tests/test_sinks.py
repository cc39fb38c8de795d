"""Sinks against the real libraries: pyvirtualcam (with a backend this file
registers), PyAV encoders and decoders, aiortc's track and VP8 encoder, and an
OpenCV window on a private Xvfb server (skipped where Xvfb is not installed)."""

from __future__ import annotations

import asyncio
import fractions
import platform
import time
from pathlib import Path

import av
import numpy as np
import pytest
import pyvirtualcam
from aiortc.mediastreams import MediaStreamError
from av.video.reformatter import Colorspace, Interpolation
from pyvirtualcam.camera import BACKENDS
from pyvirtualcam.util import decode_fourcc

from live.config import OutputSettings, SettingsError
from live.frames import Frame
from live.io import NullSink, SinkError, create_sink
from live.io.files import RecorderSink
from live.io.preview import PreviewSink, over_checkerboard
from live.io.vcam import VirtualCameraSink
from live.io.webrtc import VideoOutputTrack, encoder_frame
from utils import asynctest


def frame_of(image: np.ndarray, index: int, fps: float = 30.0, **meta) -> Frame:
    return Frame(image, index, index / fps, captured=1000.0 + index / fps, meta=meta)


def numbered(index: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A BGR image whose pixels encode its index, so a test can tell frames apart."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (index % 256, 7, 200)
    return img


# --------------------------------------------------------------------------- NullSink


@asynctest
async def test_null_sink_counts_frames():
    sink = NullSink()
    for i in range(5):
        await sink.write(numbered(i), frame_of(numbered(i), i))
    await sink.close()
    await sink.close()
    assert sink.frames == 5 and sink.last_index == 4 and sink.closed


# --------------------------------------------------------------------------- VideoOutputTrack


@asynctest
async def test_track_delivers_in_order_with_pts_from_the_capture_clock():
    track = VideoOutputTrack()
    got = []
    for i in range(3):
        await track.write(numbered(40 * i), frame_of(numbered(40 * i), i))
        got.append(await track.recv())
    assert track.kind == "video"
    # I420, what the encoders take (no conversion of theirs): a level or two of rounding
    assert np.allclose([int(f.to_ndarray(format="bgr24")[0, 0, 0]) for f in got], [0, 40, 80],
                       atol=2)
    assert all(f.format.name == "yuv420p" and (f.width, f.height) == (64, 48) for f in got)
    assert all(f.time_base == fractions.Fraction(1, 90000) for f in got)
    assert [f.pts for f in got] == [0, 3000, 6000]  # 1/30 s apart on a 90 kHz clock
    assert list(track.sent) == [0, 1, 2] and track.dropped == 0


@asynctest
async def test_track_newest_wins_and_counts_drops():
    track = VideoOutputTrack()
    for i in range(4):  # nobody is receiving: each write replaces the previous
        await track.write(numbered(40 * i), frame_of(numbered(40 * i), i))
    first = await track.recv()
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    assert not pending.done()  # waits for a new frame rather than repeating one
    await track.write(numbered(200), frame_of(numbered(200), 9))
    second = await asyncio.wait_for(pending, 1)
    assert track.dropped == 3
    assert abs(int(first.to_ndarray(format="bgr24")[0, 0, 0]) - 120) <= 2
    assert abs(int(second.to_ndarray(format="bgr24")[0, 0, 0]) - 200) <= 2
    assert list(track.sent) == [3, 9]


@asynctest
async def test_track_carries_the_incoming_webrtc_clock():
    track = VideoOutputTrack()
    tb = fractions.Fraction(1, 90000)
    await track.write(numbered(1), frame_of(numbered(1), 1, pts=123456, time_base=tb))
    out = await track.recv()
    assert out.pts == 123456 and out.time_base == fractions.Fraction(1, 90000)


@asynctest
async def test_track_frames_go_through_aiortcs_vp8_encoder_on_the_incoming_clock():
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    track = VideoOutputTrack()
    tb = fractions.Fraction(1, 1000)  # an incoming clock other than 90 kHz
    out = []
    for i in range(3):
        img = random_image(120, 160, seed=i)
        await track.write(img, frame_of(img, i, pts=5000 + 40 * i, time_base=tb))
        out.append(await track.recv())
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
    stamps = []
    for frame in out:
        payloads, timestamp = encoder.encode(frame)
        assert payloads and all(payloads)
        stamps.append(timestamp)
    assert stamps == [450000, 453600, 457200]  # 5.000 s, 5.040 s, 5.080 s at 90 kHz


def test_track_hands_an_odd_sized_image_over_as_bgr():
    """I420 needs an even size; an odd one still goes out, converted by the encoder."""
    vf = encoder_frame(numbered(90, w=7, h=5))
    assert vf.format.name == "bgr24" and (vf.width, vf.height) == (7, 5)
    assert (vf.to_ndarray(format="bgr24") == numbered(90, w=7, h=5)).all()


@asynctest
async def test_track_bgra_becomes_bgr_over_black():
    track = VideoOutputTrack()
    img = np.zeros((4, 6, 4), np.uint8)
    img[..., :3] = 200
    img[:, :3, 3] = 255  # left half opaque, right half transparent
    await track.write(img, frame_of(img, 0))
    out = (await track.recv()).to_ndarray(format="bgr24")
    assert out.shape == (4, 6, 3)
    assert (out[:, :3] == 200).all() and (out[:, 3:] == 0).all()


@asynctest
async def test_track_stop_wakes_a_pending_recv_and_later_recvs_fail():
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
    assert track.readyState == "ended" and track.frames == 0


@asynctest
async def test_track_close_wakes_recv():
    track = VideoOutputTrack()
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    await track.close()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(pending, 1)


@asynctest
async def test_track_rejects_a_non_image():
    track = VideoOutputTrack()
    with pytest.raises(SinkError, match="uint8 BGR"):
        await track.write(np.zeros((4, 4), np.float32), frame_of(numbered(0), 0))


# --------------------------------------------------------------------------- VirtualCameraSink


class RecordingBackend:
    """A real pyvirtualcam backend (the interface of pyvirtualcam.Backend) that
    keeps every frame it is sent instead of writing to a device."""

    formats = (pyvirtualcam.PixelFormat.RGB, pyvirtualcam.PixelFormat.BGR)
    send_seconds = 0.0
    opened: list["RecordingBackend"] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.fmt = pyvirtualcam.PixelFormat(decode_fourcc(fourcc))
        if self.fmt not in self.formats:
            raise RuntimeError(f"pixel format {self.fmt} not supported")
        self.width, self.height, self.fps = width, height, fps
        self._device = device or "test camera"
        self.frames: list[np.ndarray] = []
        self.closed = False
        type(self).opened.append(self)

    def send(self, frame):
        time.sleep(self.send_seconds)
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())

    def close(self):
        self.closed = True

    def device(self):
        return self._device

    def native_fourcc(self):
        return None


class RgbOnlyBackend(RecordingBackend):
    formats = (pyvirtualcam.PixelFormat.RGB,)
    opened: list[RecordingBackend] = []


class SlowBackend(RecordingBackend):
    send_seconds = 0.03
    opened: list[RecordingBackend] = []


@pytest.fixture
def backend():
    """Registers the test backends with pyvirtualcam; returns the name → class map."""
    classes = {"live-test": RecordingBackend, "live-test-rgb": RgbOnlyBackend,
               "live-test-slow": SlowBackend}
    for name, cls in classes.items():
        cls.opened.clear()
        pyvirtualcam.register_backend(name, cls)
    yield classes
    for name in classes:
        BACKENDS.pop(name, None)


def random_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


@asynctest
async def test_vcam_sends_bgr_unconverted_and_crops_odd_sizes_to_even(backend):
    images = [random_image(481, 641, seed=i) for i in range(3)]
    sink = VirtualCameraSink(backend="live-test", fps=1000, pace=True)
    for i, img in enumerate(images):
        await sink.write(img, frame_of(img, i))
    await sink.close()
    await sink.close()
    (cam,) = RecordingBackend.opened
    assert (cam.width, cam.height) == (640, 480)
    assert cam.fmt == pyvirtualcam.PixelFormat.BGR == sink.pixel_format
    assert len(cam.frames) == 3 and sink.frames == 3 and sink.dropped == 0
    for sent, img in zip(cam.frames, images):
        np.testing.assert_array_equal(sent, img[:480, :640])
    assert cam.closed


@asynctest
async def test_vcam_converts_to_rgb_for_a_backend_without_bgr(backend):
    img = random_image(48, 64)
    sink = VirtualCameraSink(backend="live-test-rgb", fps=30)
    await sink.write(img, frame_of(img, 0))
    await sink.close()
    (cam,) = RgbOnlyBackend.opened
    assert cam.fmt == pyvirtualcam.PixelFormat.RGB
    np.testing.assert_array_equal(cam.frames[0], img[..., ::-1])


@asynctest
async def test_vcam_bgra_is_composited_onto_black_and_size_changes_are_resized(backend):
    bgra = np.zeros((48, 64, 4), np.uint8)
    bgra[..., :3] = (10, 100, 250)
    bgra[:, :32, 3] = 255  # left half opaque, right half transparent
    sink = VirtualCameraSink(backend="live-test", fps=1000, pace=True)
    await sink.write(bgra, frame_of(bgra, 0))
    bigger = random_image(96, 128)
    await sink.write(bigger, frame_of(bigger, 1))
    await sink.close()
    (cam,) = RecordingBackend.opened
    assert (cam.frames[0][:, :32] == (10, 100, 250)).all()
    assert (cam.frames[0][:, 32:] == 0).all()
    assert cam.frames[1].shape == (48, 64, 3)  # the camera keeps the size it opened with


@asynctest
async def test_vcam_pacing_holds_the_output_to_fps(backend):
    img = random_image(48, 64)
    sink = VirtualCameraSink(backend="live-test", fps=30, pace=True)
    t0 = time.perf_counter()
    for i in range(30):
        await sink.write(img, frame_of(img, i))
    await sink.close()
    elapsed = time.perf_counter() - t0
    assert len(RecordingBackend.opened[0].frames) == 30 and sink.dropped == 0
    assert elapsed >= 0.8, f"30 frames at 30 fps took only {elapsed:.2f} s"


@asynctest
async def test_vcam_without_pacing_drops_frames_while_a_send_is_in_flight(backend):
    images = [numbered(i) for i in range(10)]
    sink = VirtualCameraSink(backend="live-test-slow", fps=30)
    for i, img in enumerate(images):
        await sink.write(img, frame_of(img, i))  # returns at once: the send is threaded
    await sink.close()
    sent = [int(f[0, 0, 0]) for f in SlowBackend.opened[0].frames]
    assert sink.dropped >= 1 and sink.frames + sink.dropped == 10 == len(sent) + sink.dropped
    assert sent[0] == 0 and sent == sorted(sent)


def test_vcam_unknown_backend_is_a_clear_error(backend):
    with pytest.raises(SinkError, match=r"no virtual camera backend 'nope'.*live-test"):
        VirtualCameraSink(backend="nope")


@pytest.mark.skipif(platform.system() != "Linux", reason="v4l2loopback is Linux only")
def test_vcam_missing_device_names_the_v4l2loopback_fix(tmp_path):
    img = numbered(0)

    @asynctest
    async def main():
        sink = VirtualCameraSink(device=str(tmp_path / "video99"), backend="v4l2loopback")
        try:
            await sink.write(img, frame_of(img, 0))
        finally:
            await sink.close()

    with pytest.raises(SinkError) as info:
        main()
    message = str(info.value)
    assert "video99" in message
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label='live'" in message


# --------------------------------------------------------------------------- RecorderSink


def read_clip(path: Path, n: int) -> list[tuple[np.ndarray, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        out = []
        for vf in container.decode(stream):
            out.append((vf.to_ndarray(format="bgr24"), float(vf.pts * vf.time_base)))
            if len(out) == n:
                return out
    raise AssertionError(f"{path} has fewer than {n} frames")


def decode(path: Path, decoder: str | None = None) -> tuple[av.video.stream.VideoStream, list]:
    """Every frame of a file; ``decoder`` picks a decoder (libvpx-vp9 reads VP9 alpha)."""
    container = av.open(str(path))
    stream = container.streams.video[0]
    if decoder:
        ctx = av.CodecContext.create(decoder, "r")
        frames = [f for packet in container.demux(stream) for f in ctx.decode(packet)]
    else:
        frames = list(container.decode(stream))
    info = (stream.codec_context.name, stream.codec_context.profile, stream.width, stream.height)
    container.close()
    return info, frames


def write_all(sink, frames: list[tuple[np.ndarray, float]]):
    @asynctest
    async def main():
        for i, (img, pts) in enumerate(frames):
            await sink.write(img, Frame(img, i, pts))
        await sink.close()
        await sink.close()  # idempotent

    main()


def test_recorder_mp4_round_trip_of_a_real_clip(clip_path, tmp_path):
    clip = read_clip(clip_path, 24)
    out = tmp_path / "out.mp4"
    sink = RecorderSink(out, fps=24)
    write_all(sink, clip)
    (codec, _, w, h), frames = decode(out)
    assert (codec, w, h) == ("h264", 1280, 720) and sink.frames == 24
    assert len(frames) == 24
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    seconds = [float(f.pts * f.time_base) for f in frames]
    assert seconds[-1] - seconds[0] == pytest.approx(clip[-1][1] - clip[0][1], abs=0.002)
    # colours survive the trip: read back as tagged (BT.709) with accurate rounding, a
    # red/blue swap, a BT.601/709 mix-up or swscale's truncating default would not pass
    accurate = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    assert frames[12].colorspace == Colorspace.ITU709
    got = frames[12].reformat(format="bgr24", interpolation=accurate).to_ndarray()
    diff = got.astype(np.int16) - clip[12][0]
    assert np.abs(diff).mean() < 3
    assert np.abs(diff.mean(axis=(0, 1))).max() < 0.75


def test_recorder_crops_odd_sizes_and_never_repeats_a_pts(tmp_path):
    times = [0.0, 1 / 30, 1 / 30, 0.01, 0.1, 0.1 + 1e-7, float("nan"), 0.2]  # repeats, a jump
    # back, a frame without a timestamp
    frames = [(random_image(361, 641, seed=i), t) for i, t in enumerate(times)]
    out = tmp_path / "odd.mp4"
    write_all(RecorderSink(out, fps=30), frames)
    (_, _, w, h), decoded = decode(out)
    assert (w, h) == (640, 360) and len(decoded) == len(times)
    pts = [f.pts for f in decoded]
    assert all(b > a for a, b in zip(pts, pts[1:]))


def alpha_frames(n: int, h: int = 48, w: int = 64) -> list[tuple[np.ndarray, float]]:
    """BGRA frames whose alpha is a left-to-right ramp that shifts each frame."""
    out = []
    for i in range(n):
        img = np.zeros((h, w, 4), np.uint8)
        img[..., :3] = (40, 160, 220)
        img[..., 3] = (np.linspace(0, 255, w)[None, :] + 20 * i).clip(0, 255).astype(np.uint8)
        out.append((img, i / 30))
    return out


@pytest.mark.parametrize("suffix, codec, decoder, pix_fmt", [
    (".webm", "vp9", "libvpx-vp9", "yuva420p"),  # FFmpeg's own vp9 decoder drops the alpha
    (".mov", "prores", None, "yuva444p"),
])
def test_recorder_transparent_output_keeps_the_alpha_plane(tmp_path, suffix, codec, decoder,
                                                            pix_fmt):
    written = alpha_frames(8)
    out = tmp_path / f"alpha{suffix}"
    write_all(RecorderSink(out, fps=30, transparent=True), written)
    (name, profile, w, h), frames = decode(out, decoder)
    assert name == codec and (w, h) == (64, 48) and len(frames) == 8
    if codec == "prores":
        assert profile == "4444"
    for frame, (img, _) in zip(frames, written):
        assert frame.format.name.startswith(pix_fmt)
        alpha = frame.to_ndarray(format="bgra")[..., 3].astype(np.int16)
        assert np.abs(alpha - img[..., 3]).mean() < 3  # the ramp, as written
        assert np.ptp(alpha) > 100  # and it varies across the frame


def test_recorder_transparent_mp4_names_the_alternatives(tmp_path):
    with pytest.raises(SinkError, match=r"\.webm.*\.mov"):
        RecorderSink(tmp_path / "x.mp4", fps=30, transparent=True)


def test_recorder_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(SinkError, match="expected a file ending in .mp4"):
        RecorderSink(tmp_path / "x.gif", fps=30)
    with pytest.raises(SinkError, match="does not exist"):
        RecorderSink(tmp_path / "missing" / "x.mp4", fps=30)


def test_recorder_without_frames_leaves_no_file(tmp_path):
    sink = RecorderSink(tmp_path / "empty.webm", fps=30)
    asynctest(sink.close)()
    assert not (tmp_path / "empty.webm").exists()


# --------------------------------------------------------------------------- PreviewSink


REPO = Path(__file__).resolve().parent.parent

# A real window on a virtual X server, and real key presses through XTest.
PREVIEW_SCRIPT = """
import asyncio, ctypes, json, sys
import numpy as np
from live.io.preview import PreviewSink  # first: it loads OpenCV before PyAV
from live.frames import EndOfStream, Frame

def press(keysym):
    x11, xtst = ctypes.CDLL("libX11.so.6"), ctypes.CDLL("libXtst.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XStringToKeysym.restype = ctypes.c_ulong
    dpy = ctypes.c_void_p(x11.XOpenDisplay(None))
    code = x11.XKeysymToKeycode(dpy, ctypes.c_ulong(x11.XStringToKeysym(keysym.encode())))
    xtst.XTestFakeMotionEvent(dpy, -1, 40, 40, 0)  # keys go to the window under the pointer
    xtst.XTestFakeKeyEvent(dpy, code, 1, 0)
    xtst.XTestFakeKeyEvent(dpy, code, 0, 0)
    x11.XFlush(dpy)
    x11.XCloseDisplay(dpy)

async def main():
    sink = PreviewSink("live-test")
    written, pressed = 0, False
    for i in range(150):
        img = np.zeros((240, 320, 4 if i % 2 else 3), np.uint8)
        img[..., -1] = i
        try:
            await sink.write(img, Frame(img, i, i / 30))
        except EndOfStream:  # closed by the key: this output has ended
            assert sink.closed_by_user
            break
        written += 1
        await asyncio.sleep(0.01)
        if not pressed and i >= 10 and sink.frames >= 5:  # the window is up and showing
            press(sys.argv[1])
            pressed = True
    await sink.close()
    await sink.close()
    print(json.dumps({"written": written, "frames": sink.frames, "dropped": sink.dropped,
                      "closed_by_user": sink.closed_by_user}))

asyncio.run(main())
"""


def run_python(script: str, *args: str, env: dict | None = None, timeout: float = 60):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def xvfb_display():
    """A private virtual X server (Xvfb); skips where there is none."""
    import ctypes.util
    import shutil
    import subprocess

    if platform.system() != "Linux" or not shutil.which("Xvfb") \
            or not ctypes.util.find_library("Xtst"):
        pytest.skip("needs Xvfb and libXtst (Debian: apt install xvfb) for a real preview window")
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-nolisten", "tcp", "-screen", "0",
                               "800x600x24"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        yield ":" + server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("key, closes", [("q", True), ("Escape", True), ("x", False)])
def test_preview_window_shows_frames_and_q_or_esc_close_it(xvfb_display, key, closes):
    import json

    result = run_python(PREVIEW_SCRIPT, key, env={"DISPLAY": xvfb_display})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["closed_by_user"] is closes
    assert report["written"] == (report["frames"] + report["dropped"])
    assert report["frames"] >= 5
    assert report["written"] < 150 if closes else report["written"] == 150


@pytest.mark.skipif(platform.system() != "Linux", reason="the clash is between X libraries")
def test_preview_refuses_to_start_when_pyav_was_loaded_first():
    """Rather than hang in cv2.imshow at 100% CPU (PyAV #978), say what to change."""
    script = ("import av\nfrom live.io.preview import PreviewSink, SinkError\n"
              "try:\n    PreviewSink()\nexcept SinkError as exc:\n    print(exc)\n")
    result = run_python(script, env={"DISPLAY": ":99"})
    assert "import cv2 (or live.io.preview) before anything imports av" in result.stdout, \
        result.stderr[-2000:]


@pytest.mark.skipif(platform.system() != "Linux", reason="the display check is Linux's")
def test_preview_without_a_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="no display.*DISPLAY"):
        PreviewSink("live")


def test_preview_shows_transparency_over_a_checkerboard():
    img = np.zeros((32, 32, 4), np.uint8)
    img[..., :3] = (0, 0, 255)
    img[:, 16:, 3] = 255  # right half opaque red
    out = over_checkerboard(img)
    assert (out[:, 16:] == (0, 0, 255)).all()
    left = out[:, :16, 0]
    assert set(np.unique(left)) == {102, 153} and (out[:, :16, 2] == left).all()
    assert out[0, 0, 0] != out[16, 0, 0]  # 16-pixel squares alternate


# --------------------------------------------------------------------------- create_sink


def test_create_sink_picks_the_sink_from_the_target(backend, tmp_path):
    assert isinstance(create_sink(OutputSettings(target="null"), 30, False), NullSink)
    rec = create_sink(OutputSettings(target=str(tmp_path / "a.webm")), 25, True)
    assert isinstance(rec, RecorderSink) and rec.codec.pix_fmt == "yuva420p" and rec.fps == 25
    rec = create_sink(OutputSettings(target=str(tmp_path / "a.mkv"), fps=60), 25, False)
    assert isinstance(rec, RecorderSink) and rec.codec.name == "libx264" and rec.fps == 60
    cam = create_sink(OutputSettings(target="vcam", vcam_backend="live-test",
                                     vcam_device="/dev/video7"), 24, False)
    assert isinstance(cam, VirtualCameraSink)
    assert (cam.backend, cam.device, cam.fps) == ("live-test", "/dev/video7", 24)


def test_create_sink_bad_targets_are_settings_errors(tmp_path):
    with pytest.raises(SettingsError, match=r"expected vcam, preview, null"):
        create_sink(OutputSettings(target="out.gif"), 30, False)
    with pytest.raises(SettingsError, match=r"\.webm.*\.mov"):
        create_sink(OutputSettings(target=str(tmp_path / "a.mp4")), 30, True)


CTRL_C_SCRIPT = """
import asyncio, sys
import numpy as np
from live.frames import Frame
from live.io.files import RecorderSink

async def main():
    sink = RecorderSink(sys.argv[1], fps=30)
    try:
        i = 0
        while True:
            img = np.full((120, 160, 3), i % 256, np.uint8)
            await sink.write(img, Frame(img, i, i / 30))
            i += 1
            if i == 10:
                print("recording", flush=True)
            await asyncio.sleep(0.005)
    finally:
        await sink.close()  # what the pipeline does in its finally

asyncio.run(main())
"""


@pytest.mark.skipif(platform.system() == "Windows", reason="SIGINT to a child is POSIX")
def test_recorder_file_plays_after_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "interrupted.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "recording", proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    (codec, _, w, h), frames = decode(out)  # a missing moov atom would fail to open
    assert (codec, w, h) == ("h264", 160, 120) and len(frames) >= 10
