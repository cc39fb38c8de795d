"""torch's OpenMP workers must sleep, not spin, between parallel regions.

libgomp reads its wait policy once, when torch loads; ``import live`` sets it
first (see live/__init__.py). Checked in a fresh interpreter, where libgomp
prints the policy it actually uses (``OMP_DISPLAY_ENV``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gomp_spincount(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")}
    proc = subprocess.run([sys.executable, "-c", "import live, torch"], cwd=ROOT,
                          env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
                          capture_output=True, text=True, timeout=120, check=True)
    for line in proc.stderr.splitlines() + proc.stdout.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=", 1)[1].strip().strip("'")
    pytest.skip("torch's OpenMP runtime is not libgomp (it printed no GOMP_SPINCOUNT)")


def test_importing_live_makes_torch_openmp_workers_sleep():
    assert gomp_spincount() == "0"


def test_an_operators_own_setting_wins():
    assert gomp_spincount(OMP_WAIT_POLICY="ACTIVE") != "0"
    assert gomp_spincount(GOMP_SPINCOUNT="1000") == "1000"
