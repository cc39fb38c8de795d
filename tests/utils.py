"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any, Callable, Coroutine


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
