"""Per-frame arrays must not cost page faults: ``import live`` keeps freed heap memory.

Checked in fresh interpreters that allocate and free, on the main thread (where
a WebRTC session decodes and converts its frames), what a 1280x720 frame does,
counting the minor page faults of the loop (``getrusage``): glibc's default
returns the freed top of its main heap to the kernel and faults it back in
every frame.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the tuning is glibc malloc's (Linux)")

FRAMES = """
import resource, sys
if {import_live}:
    import live
import numpy as np
def frame():
    picture = np.ones((720, 1280, 3), np.uint8)
    alpha = np.ones((720, 1280), np.float32)
    out = np.ones((720, 1280, 3), np.uint8)
    return int(picture[0, 0, 0] + alpha[0, 0] + out[0, 0, 0])
for _ in range(5):
    frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    frame()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def faults_per_frame(import_live: bool, **env: str) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")
             and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", FRAMES.format(import_live=import_live)],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_live_keeps_a_frames_memory_mapped():
    # 9.2 MB of arrays a frame are ~2,250 pages: without live, most fault in again
    assert faults_per_frame(import_live=False) > 500
    assert faults_per_frame(import_live=True) < 20


def test_an_operators_own_malloc_settings_win():
    # every array of 128 KB or more mapped afresh: live must not override it
    assert faults_per_frame(import_live=True, MALLOC_MMAP_THRESHOLD_="131072") > 500
