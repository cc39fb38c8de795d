"""Benchmarks. Each prints one JSON object as the last line of its output, also
when it fails: ``{"error": "why"}`` then, and exit status 1."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

#: The evaluation data (davis-*/, clips/): $LIVE_DATA_DIR, else ../shared/data.
DATA = Path(os.environ.get("LIVE_DATA_DIR",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def report(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure`` and print its result as one JSON line; on failure print
    ``{"error": ...}`` instead and exit 1, so the last line is always JSON."""
    try:
        result = measure()
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            raise
        _fail(exc.code if isinstance(exc.code, str)
              else f"exit status {exc.code} (see the messages above)")
    except Exception as exc:
        traceback.print_exc()
        _fail(f"{type(exc).__name__}: {exc}")
    print(json.dumps(result), flush=True)
    return result


def _fail(why: str) -> None:
    print(f"error: {why}", file=sys.stderr)
    print(json.dumps({"error": why}), flush=True)
    sys.exit(1)


def load_frames(path: Path, count: int | None = None, size: tuple[int, int] | None = None,
                start: int = 0) -> list[Any]:
    """BGR frames ``start`` to ``start + count`` (all by default) of a video file,
    resized to ``size`` (w, h) when given: the clips benchmarks and tests replay."""
    import cv2  # before av: the other order can make OpenCV's windows hang (PyAV #978)
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, vf in enumerate(container.decode(video=0)):
            if i < start:
                continue
            image = vf.to_ndarray(format="bgr24")
            if size is not None and (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            frames.append(image)
            if len(frames) == count:
                break
    return frames


def cpu_seconds(procs: list[Any]) -> float:
    """User + system CPU seconds of ``procs`` (psutil.Process), those still running."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # a process that just ended
            continue
        total += t.user + t.system
    return total


def psnr(decoded: Any, sent: Any) -> float:
    """PSNR (dB) of an 8-bit plane a receiver decoded against the one that was sent."""
    import numpy as np

    err = np.mean((decoded.astype(np.float32) - sent) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(float(err), 1e-9)))


def ssim(a: Any, b: Any) -> float:
    """Mean structural similarity of two 8-bit planes (Wang et al. 2004's constants)."""
    import cv2
    import numpy as np

    a, b = a.astype(np.float32), b.astype(np.float32)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def mean(x: Any) -> Any:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    ma, mb = mean(a), mean(b)
    va, vb, cov = mean(a * a) - ma * ma, mean(b * b) - mb * mb, mean(a * b) - ma * mb
    return float(np.mean((2 * ma * mb + c1) * (2 * cov + c2)
                         / ((ma * ma + mb * mb + c1) * (va + vb + c2))))


#: A session worker's threads by the names ``live.io.worker.name_os_threads`` shows
#: the OS (first matching prefix). The worker's main thread runs its event loop.
THREAD_ROLES = (("live-peer", "processing"), ("asyncio_", "encoder"),
                ("video-decoder", "decoder"), ("audio-decoder", "decoder"))


def thread_cpu(root: Any) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) → (role, CPU seconds) for every thread of ``root`` (psutil.Process,
    a ``live serve``) and its workers: ``control server`` for all of the root's
    threads, then the worker's ``event loop``, ``processing``, ``encoder``
    (aiortc encodes on the loop's executor), ``decoder`` and ``other`` (a thread
    not yet named, a library's own). Linux only; empty elsewhere."""
    import psutil

    out = {}
    for proc in process_tree(root):
        try:
            threads = proc.threads()
        except psutil.Error:
            continue
        for t in threads:
            if proc.pid == root.pid:
                role = "control server"
            elif t.id == proc.pid:
                role = "event loop"
            else:
                try:
                    comm = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
                except OSError:
                    continue
                role = next((r for prefix, r in THREAD_ROLES if comm.startswith(prefix)),
                            "other")
            out[proc.pid, t.id] = (role, t.user_time + t.system_time)
    return out


def cpu_by_role(before: dict[tuple[int, int], tuple[str, float]],
                after: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two ``thread_cpu`` snapshots, by role (a thread that
    started in between counts from zero; one that ended is lost)."""
    spent: dict[str, float] = {}
    for key, (role, cpu) in after.items():
        spent[role] = spent.get(role, 0.0) + cpu - before.get(key, (role, 0.0))[1]
    return spent


def process_tree(proc: Any) -> list[Any]:
    """``proc`` and its descendants: a server's CPU includes its session workers'."""
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]
