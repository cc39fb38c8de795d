"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Coroutine


def asynctest(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an ``async def`` test on a fresh event loop (aiortc's ``tests/utils.py`` habit):
    one decorator instead of an ``async def main()`` and ``asyncio.run`` in every body.
    Fixtures still arrive as arguments (pytest reads the wrapped signature)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return run
