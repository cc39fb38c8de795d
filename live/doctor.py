"""``live doctor``: one line per thing live needs, with the fix when it is missing."""

from __future__ import annotations

import glob
import platform
from pathlib import Path

from live.checkpoints import SAM2_MODELS, SELFIE_FILES, checkpoint_dir, is_valid
from live.segment import gpu_device


def _check(ok: bool, what: str, fix: str = "") -> bool:
    print(f"  [{'ok' if ok else '--'}] {what}" + ("" if ok or not fix else f"\n       fix: {fix}"))
    return ok


def _v4l_name(device: str) -> str:
    """The driver's name for /dev/videoN, or "?" (a device may vanish while we look)."""
    try:
        return (Path("/sys/class/video4linux") / Path(device).name / "name").read_text().strip()
    except OSError:
        return "?"


def webcams() -> list[str]:
    """Capture devices on Linux; elsewhere, the first OpenCV indices that open."""
    if platform.system() == "Linux":
        return [f"{dev} ({_v4l_name(dev)})" for dev in sorted(glob.glob("/dev/video*"))]
    import cv2

    found = []
    for index in range(4):
        cap = cv2.VideoCapture(index)
        if cap.isOpened():
            found.append(f"webcam:{index}")
        cap.release()
    return found


def loopback_devices() -> list[str]:
    """v4l2loopback devices are the ones whose driver is v4l2 loopback."""
    return [f"/dev/{Path(d).name} ({_v4l_name(Path(d).name)})"
            for d in sorted(glob.glob("/sys/devices/virtual/video4linux/video*"))]


def run_doctor() -> int:
    print("cameras")
    cams = webcams()
    loop = loopback_devices()
    loop_paths = {d.split()[0] for d in loop}  # /dev/video1 must not hide /dev/video10
    real = [c for c in cams if c.split()[0] not in loop_paths]
    _check(bool(real), f"webcam: {', '.join(real) or 'none found'}",
           "plug in a camera, or try `live run --source synthetic` / a video file")
    print("virtual camera")
    if platform.system() == "Linux":
        from live.io.vcam import V4L2LOOPBACK_FIX

        _check(bool(loop), f"v4l2loopback: {', '.join(loop) or 'no device'}", V4L2LOOPBACK_FIX)
    else:
        _check(True, "use the OBS Virtual Camera (install OBS Studio, start its virtual camera "
               "once) — live picks it through pyvirtualcam's 'obs' backend")
    print("accelerator")
    try:
        import torch

        gpu = gpu_device()
        _check(gpu is not None, f"torch {torch.__version__}: " + (
               torch.cuda.get_device_name(0) if gpu == "cuda" else "MPS" if gpu else "CPU only"),
               "SAM 2 needs a GPU to run live; the embedded selfie engine runs on the CPU")
    except Exception as exc:
        _check(False, f"torch not importable ({exc})",
               "only the SAM 2 engine needs it: `make sam2` (the [sam2] extra)")
    print(f"models in {checkpoint_dir()}")
    for variant, spec in SELFIE_FILES.items():
        _check(is_valid(checkpoint_dir() / spec.name, spec), f"selfie {variant}: {spec.name}",
               "live fetch selfie (also fetched automatically on first use)")
    for model, (spec, _cfg) in SAM2_MODELS.items():
        _check(is_valid(checkpoint_dir() / spec.name, spec), f"SAM 2.1 {model}: {spec.name}",
               f"live fetch sam2 --model {model}")
    return 0
