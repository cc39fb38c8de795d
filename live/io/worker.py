"""The private thread every source, sink, pipeline and background video does its
blocking work on: the one threading style of ``live``."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import cv2

#: Threads a stage's own parallel loops may use (OpenCV's, the selfie model's); None
#: leaves each library its default. See ``limit_threads``.
FRAME_THREADS: int | None = None


def limit_threads(threads: int) -> None:
    """Let this process's frame work use at most ``threads`` threads in each library.

    A session worker runs one per core: there a second thread in OpenCV and the
    selfie model bought ~2.5 ms of latency per 720p frame with ~6 ms more CPU
    (pool wake-ups and spinning, 20.1 against 26.3 ms of server CPU per frame in
    ``bench.capacity``), CPU another session's worker wanted. Process-wide, as
    OpenCV's pool is.
    """
    global FRAME_THREADS
    FRAME_THREADS = threads
    cv2.setNumThreads(threads)


def name_os_threads() -> None:
    """Show this process's threads under their Python names in the OS (``top -H``,
    ``ps -L``, ``/proc/PID/task/TID/comm``), cut to Linux's 15 characters.

    Python names its threads only for itself; to the OS every thread of a
    session worker is "python", so which stage burns a core (processing
    ``live-peer-…``, aiortc's ``video-decoder``, the encoder on the loop's
    executor ``asyncio_…``) could not be seen from outside. ``bench.capacity``
    reads these names to split a worker's CPU by stage. The main thread keeps
    its name: it is the process's name (``ps``, ``killall``). A process may
    rename its own threads; anywhere else (not Linux, no /proc) this does
    nothing. Cheap enough to call every second: a name is written only when
    it differs.
    """
    tasks = Path("/proc/self/task")
    for thread in threading.enumerate():
        if thread.native_id is None or thread is threading.main_thread():
            continue
        comm = tasks / str(thread.native_id) / "comm"
        name = thread.name.encode("utf-8", "replace")[:15]
        try:
            if comm.read_bytes().rstrip(b"\n") != name:
                comm.write_bytes(name)
        except OSError:  # not Linux, or the thread has just ended
            continue


class Worker:
    """One dedicated thread for a source, a sink or a pipeline: device, codec and model
    calls stay off the event loop and run one at a time, in submission order.

    It remembers the latest ``submit``ted call, so a sink that drops frames
    rather than queueing them asks ``busy`` before submitting the next one.
    """

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._last: asyncio.Future[Any] | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._last = asyncio.wrap_future(self._pool.submit(fn, *args))
        return self._last

    def busy(self) -> bool:
        """Whether the latest call is still running; raises what it raised once done."""
        if self._last is None:
            return False
        if not self._last.done():
            return True
        self._last.result()
        return False

    async def settle(self) -> BaseException | None:
        """Wait for the latest call; the exception it raised, if any."""
        if self._last is None:
            return None
        try:
            await self._last
        except Exception as exc:
            return exc
        return None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call and wait (opening, closing): not a call that ``busy`` tracks."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue a call from a thread without an event loop (the processing thread)."""
        return self._pool.submit(fn, *args)

    def shutdown(self, wait: bool = False) -> None:
        """Drop the calls not started; ``wait`` for the one running."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
