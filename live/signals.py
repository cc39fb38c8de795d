"""Ctrl-C and SIGTERM end ``live run`` and ``live serve`` the same way: through the
running loop, so the pipeline or server stops between two frames and closes its
files, devices and peers."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable


def install_stop_signals(stop: Callable[[], object]) -> None:
    """Call ``stop`` on SIGINT and SIGTERM; where the loop cannot take signal handlers
    (Windows, or not the main thread) Ctrl-C stays a KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
