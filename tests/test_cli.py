"""The ``live`` command as a user meets it: a start that loads nothing it does not
need, a quiet mode that is quiet, a file run that says what it wrote, help that
starts with the flags people type, and ``live run`` beside a running ``live serve``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from live.checkpoints import SELFIE_FILES, selfie_model_path
from live.serve.client import ControlClient
from utils import asynctest, free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def selfie_only_dir(tmp_path: Path) -> Path:
    """A checkpoint folder holding the selfie models and no SAM 2 checkpoint."""
    for variant, spec in SELFIE_FILES.items():
        shutil.copy(selfie_model_path(variant), tmp_path / spec.name)
    return tmp_path


def run_live(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "live.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# Runs `live run` in-process, then says which heavy modules it loaded.
LOADED_AFTER_RUN = """
import json, sys
from live.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "sam2": "sam2" in sys.modules}))
"""


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_engine_auto_imports_torch_only_when_a_sam2_checkpoint_is_present(
        selfie_only_dir: Path, tmp_path: Path, with_checkpoint: bool) -> None:
    if with_checkpoint:
        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed (the [sam2] extra): nothing to look for")
        (selfie_only_dir / "sam2.1_hiera_tiny.pt").write_bytes(b"0")  # present, if useless
    out = tmp_path / "out.mp4"
    env = dict(os.environ, LIVE_CHECKPOINT_DIR=str(selfie_only_dir))
    proc = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER_RUN, "run", "--source", "synthetic", "--output",
         str(out), "--frames", "5", "--quiet", "--no-control"],  # --engine auto: the default
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert loaded["rc"] == 0
    # With a checkpoint, auto must ask torch about a GPU (this machine has none: selfie runs);
    # without one it has no reason to load torch (seconds and hundreds of MB).
    assert loaded["torch"] is with_checkpoint
    assert not loaded["sam2"]


def test_quiet_prints_nothing_and_a_file_run_says_what_it_wrote(data_dir: Path,
                                                               tmp_path: Path) -> None:
    clip = data_dir / "clips" / "carphone_pristine.mp4"  # 30 fps; a file: every frame is kept
    out = tmp_path / "clip.mp4"
    args = ("run", "--source", str(clip), "--output", str(out), "--frames", "12",
            "--no-control")
    quiet = run_live(*args, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" comes from C++ on fd 2
    assert quiet.stdout == "" and quiet.stderr == ""

    loud = run_live(*args)
    assert loud.returncode == 0, loud.stderr
    assert "XNNPACK" not in loud.stderr
    last = loud.stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"live: wrote {re.escape(str(out))}: (\d+) frames, ([\d.]+) s", last)
    assert match, last
    assert int(match[1]) == 12
    assert abs(float(match[2]) - 12 / 30) < 0.01


def test_run_help_starts_with_source_output_background_and_engine() -> None:
    proc = run_live("run", "--help")
    assert proc.returncode == 0
    usage, body = proc.stdout.split("\n\n", 1)
    assert len(usage) < 200 and "--source" in usage  # not a hundred flags in the usage line
    first = [body.index(flag) for flag in ("--source SPEC", "--output TARGET",
                                             "--background BACKGROUND", "--engine ")]
    assert first == sorted(first)
    assert first[-1] < body.index("--feather")       # before every matte option
    assert first[0] < 300                            # on the first screen


async def read_line_matching(stream: asyncio.StreamReader, pattern: str, timeout: float) -> str:
    seen = []
    async with asyncio.timeout(timeout):
        while line := (await stream.readline()).decode():
            seen.append(line)
            if re.search(pattern, line):
                return line
    raise AssertionError(f"no line matching {pattern!r} in {seen}")


def test_run_beside_serve_opens_its_control_panel_on_the_next_free_port(tmp_path: Path) -> None:
    port = free_port()

    @asynctest
    async def main() -> None:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "live.cli", "serve", "--port", str(port), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        run = None
        try:
            await read_line_matching(serve.stdout, rf"serving on http://127.0.0.1:{port}/", 60)
            run = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "live.cli", "run", "--port", str(port), "--source",
                "synthetic", "--frames", "300", "--output", str(tmp_path / "o.mp4"), cwd=REPO,
                stderr=asyncio.subprocess.PIPE)
            line = await read_line_matching(run.stderr, r"control panel at ", 60)
            url = re.search(r"http://\S+", line)[0]
            assert f":{port}/" not in url and "is taken" in line
            async with ControlClient(url) as client:  # the page of that URL steers the run
                hello = await client.request("hello")
                assert [s["session"] for s in hello["sessions"]] == ["run"]
                reply = await client.request("settings.set", session="run",
                                             settings={"background": {"color": "#123456"}})
                assert reply["type"] == "ok", reply
        finally:
            for proc in (run, serve):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()

    main()


# `live run --engine sam2` in an install without the [sam2] extra (torch and sam2 hidden).
WITHOUT_SAM2 = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "sam2"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Hide())
from live.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sam2_without_its_extra_names_the_command_that_installs_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_SAM2, "run", "--engine", "sam2", "--source", "synthetic",
         "--output", str(tmp_path / "o.mp4"), "--frames", "2", "--no-control"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "needs torch and sam2" in message, message
    assert f"make sam2` in {REPO}" in message and f"pip install -e '{REPO}[sam2]'" in message
    assert "Traceback" not in proc.stderr


def test_version_is_printed_without_a_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "live.cli", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert re.fullmatch(r"live \d+\.\d+\.\d+\n", proc.stdout), proc.stdout
    # the installed package's version is read from the same place (pyproject's dynamic attr)
    import importlib.metadata

    import live
    installed = importlib.metadata.version("live")
    assert proc.stdout == f"live {live.__version__}\n" == f"live {installed}\n"


@pytest.mark.parametrize("command", ["run", "serve", "config"])
def test_every_command_prints_its_help(command: str) -> None:
    """Help texts come from the schema; one with a "%" in it broke argparse's help."""
    proc = subprocess.run([sys.executable, "-m", "live.cli", command, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "--background" in proc.stdout and "Traceback" not in proc.stderr
