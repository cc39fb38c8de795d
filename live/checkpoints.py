"""Model files: where they live, how they are fetched, how they are verified.

Weights never go in git. The selfie models come out of the ``mediapipe==0.10.21``
wheel on PyPI (the only place that ships these exact bytes; we do not depend
on mediapipe itself); SAM 2.1 checkpoints come from Meta's download server.
Both are verified before use, so a truncated download is never loaded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from live.config import SAM2_SIZES, EngineSettings


class ModelMissingError(RuntimeError):
    """A model file, or the software that runs it, is absent or corrupt; the message
    names the command that fixes it."""


def checkpoint_dir() -> Path:
    """``$LIVE_CHECKPOINT_DIR``, else the repo's ``checkpoints/``, else a user cache."""
    env = os.environ.get("LIVE_CHECKPOINT_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "checkpoints"
    if repo.is_dir():
        return repo
    return Path.home() / ".cache" / "live" / "checkpoints"


@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int
    sha256: str | None


SELFIE_FILES = {
    "square": ModelFile("selfie_segmentation.tflite", 249_505,
                        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
    "landscape": ModelFile("selfie_segmentation_landscape.tflite", 250_145,
                           "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd"),
}
MEDIAPIPE_WHEEL = "mediapipe==0.10.21"
MEDIAPIPE_MEMBER_DIR = "mediapipe/modules/selfie_segmentation/"

SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
#: The checkpoint file and model config of each SAM 2.1 size, in the order of the
#: schema's one list of sizes (``live.config.SAM2_SIZES``).
SAM2_MODELS = dict(zip(SAM2_SIZES, [
    (ModelFile("sam2.1_hiera_tiny.pt", 156_008_466, None), "configs/sam2.1/sam2.1_hiera_t.yaml"),
    (ModelFile("sam2.1_hiera_small.pt", 184_416_285, None), "configs/sam2.1/sam2.1_hiera_s.yaml"),
    (ModelFile("sam2.1_hiera_base_plus.pt", 323_606_802, None),
     "configs/sam2.1/sam2.1_hiera_b+.yaml"),
    (ModelFile("sam2.1_hiera_large.pt", 898_083_611, None), "configs/sam2.1/sam2.1_hiera_l.yaml"),
], strict=True))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid(path: Path, spec: ModelFile) -> bool:
    if not path.is_file() or path.stat().st_size != spec.size:
        return False
    return spec.sha256 is None or sha256_of(path) == spec.sha256


# ---------------------------------------------------------------- selfie models

def selfie_model_path(variant: str, fetch: bool = True) -> Path:
    """Path of a verified selfie model, fetching both variants on first use."""
    spec = SELFIE_FILES[variant]
    path = checkpoint_dir() / spec.name
    if is_valid(path, spec):
        return path
    if not fetch:
        raise ModelMissingError(f"selfie model {path} is missing; run `live fetch selfie`")
    fetch_selfie()
    return path


def fetch_selfie(log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[Path]:
    """Take both .tflite files out of the mediapipe wheel (fetched with pip, no install)."""
    dest = checkpoint_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {spec.name: spec for spec in SELFIE_FILES.values()}
    if all(is_valid(dest / n, s) for n, s in wanted.items()):
        return [dest / n for n in wanted]
    with tempfile.TemporaryDirectory() as tmp:
        log(f"fetching the selfie models from the {MEDIAPIPE_WHEEL} wheel on PyPI (~35 MB) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
               "--progress-bar", "on", "-d", tmp, MEDIAPIPE_WHEEL]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("mediapipe-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelMissingError(
                "could not download the selfie model (pip said: "
                f"{proc.stderr.strip().splitlines()[-1:] or 'nothing'}). Fix: with internet "
                f"access run `live fetch selfie`, or run `{' '.join(cmd[2:])}` yourself and copy "
                f"{MEDIAPIPE_MEMBER_DIR}*.tflite from the wheel (a zip) into {dest}/")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, spec in wanted.items():
                data = wheel.read(MEDIAPIPE_MEMBER_DIR + name)
                if len(data) != spec.size or hashlib.sha256(data).hexdigest() != spec.sha256:
                    raise ModelMissingError(f"{name} in {wheels[0].name} has an unexpected "
                                            "checksum; refusing to use it")
                tmp_path = dest / (name + ".part")
                tmp_path.write_bytes(data)
                tmp_path.replace(dest / name)
                log(f"  {dest / name} ({len(data):,} bytes, sha256 ok)")
    return [dest / n for n in wanted]


# ---------------------------------------------------------------- SAM 2 checkpoints

def sam2_checkpoint_path(settings: EngineSettings) -> Path:
    if settings.checkpoint:
        return Path(settings.checkpoint)
    return checkpoint_dir() / SAM2_MODELS[settings.sam2_model][0].name


def require_sam2_software() -> None:
    """SAM 2 needs torch and sam2, the optional ``[sam2]`` extra the default install
    leaves out (~1 GB more; several GB with CUDA): say exactly how to add them."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a broken or half-removed install
            return True

    importlib.invalidate_caches()  # installed while live runs: found without a restart
    missing = [m for m in ("torch", "sam2") if absent(m)]
    if not missing:
        return
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():  # a checkout (make setup installs it editable)
        fix = (f"`make sam2` in {repo} (or `{sys.executable} -m pip install -e "
               f"'{repo}[sam2]'`)")
    else:  # installed from a wheel: the extra's own requirements, as pyproject.toml lists them
        from importlib import metadata

        try:
            wanted = [r.split(";")[0].strip() for r in metadata.requires("live") or ()
                      if "extra" in r and "sam2" in r.split(";")[1]]
        except metadata.PackageNotFoundError:
            wanted = []
        fix = f"`{sys.executable} -m pip install " + " ".join(
            f"'{r}'" for r in wanted or missing) + "`"
    raise ModelMissingError(f"the sam2 engine needs {' and '.join(missing)}, which the default "
                            f"install leaves out. Fix: {fix}, then pick sam2 again")


def sam2_config_name(model: str) -> str:
    return SAM2_MODELS[model][1]


def require_sam2_checkpoint(settings: EngineSettings) -> Path:
    path = sam2_checkpoint_path(settings)
    if not path.is_file():
        raise ModelMissingError(
            f"SAM 2 checkpoint {path} not found. Fix: `live fetch sam2 --model "
            f"{settings.sam2_model}` (or checkpoints/download_ckpts.sh), or pass "
            "--checkpoint PATH to a local file")
    if not settings.checkpoint:
        spec = SAM2_MODELS[settings.sam2_model][0]
        if path.stat().st_size != spec.size:
            raise ModelMissingError(f"SAM 2 checkpoint {path} has {path.stat().st_size:,} bytes, "
                                    f"expected {spec.size:,}: a partial download? Run `live fetch "
                                    f"sam2 --model {settings.sam2_model}` again")
    return path


def fetch_sam2(model: str, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """Download one SAM 2.1 checkpoint with a progress line, verified by size."""
    spec = SAM2_MODELS[model][0]
    dest = checkpoint_dir() / spec.name
    if is_valid(dest, spec):
        log(f"{dest} already present ({spec.size:,} bytes)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = SAM2_BASE_URL + spec.name
    part = dest.with_suffix(".pt.part")
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(part, "wb") as out:
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                print(f"\r  {done / 1e6:7.1f} / {spec.size / 1e6:.1f} MB", end="", file=sys.stderr)
        print(file=sys.stderr)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ModelMissingError(f"could not download {url}: {exc}. Fix: download it by hand "
                                f"into {dest} (checkpoints/download_ckpts.sh) or pass "
                                "--checkpoint PATH") from None
    if not is_valid(part, spec):
        size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise ModelMissingError(f"{url} gave {size:,} bytes, expected {spec.size:,}; try again")
    part.replace(dest)
    return dest
