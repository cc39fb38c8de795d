"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine

ROOT = Path(__file__).resolve().parent.parent


def asynctest(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an ``async def`` test on a fresh event loop (aiortc's ``tests/utils.py`` habit):
    one decorator instead of an ``async def main()`` and ``asyncio.run`` in every body.
    Fixtures still arrive as arguments (pytest reads the wrapped signature)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return run


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_bench(*args: str, timeout: float = 300) -> tuple[int, dict, str]:
    """``python -m bench.<args>`` from the repository root, as a user runs it: its exit
    status, its last line (every benchmark ends on one JSON object) and its stderr."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1]), done.stderr
