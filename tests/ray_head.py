"""A Ray head of a test's own on 127.0.0.1 (no dashboard), stopped by its process
group, so a cluster someone else runs on this machine is left alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from utils import free_port

SKIP_REASON = "Ray is not installed: pip install -e '.[cluster]' (make test does)"


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[str]:
    """Start the head; yield its address. Ray is imported (by a driver, a server) only
    inside, with the environment a loopback head needs."""
    with pytest.MonkeyPatch.context() as mp:
        # before Ray is imported: keep 127.0.0.1 rather than the interface address
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # head and driver agree on no token whatever ~/.ray holds (a `ray.init()` elsewhere
        # leaves a token there, which turns token auth on for the driver only)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        with _head(num_cpus) as address:
            yield address


@contextlib.contextmanager
def _head(num_cpus: int) -> Iterator[str]:
    pytest.importorskip("ray", reason=SKIP_REASON)
    ray_cli = Path(sys.executable).with_name("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=false", f"--num-cpus={num_cpus}", "--num-gpus=0",
         f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not _reachable(port):
        if head.poll() is not None or time.monotonic() > deadline:
            _stop(head)
            pytest.fail(f"the Ray head did not start: {head.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(head: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
