"""Admission: a new video session only while the machine has room for its frames.

A fixed cap (the server used to admit 8) says nothing about what the machine
carries: at 640x480 on two cores, a third peer pushed every round trip past
a second. Here the cost of a frame is measured, not assumed: the CPU this
process (and any worker processes it reports) spent per frame processed over
the last steady seconds (the same sessions throughout: a session's start or
end is CPU of no frame), times the frame rate a new peer sends, for it and
for each peer admitted too recently to show in the measurement. It is
admitted only when that fits in the machine's idle CPU (all processes
counted, so other load counts too) with some headroom, and while no running
session is already overloaded (dropping stale frames) and the event loop
keeps time.

The interface is narrow on purpose (``admit`` with what the server knows,
``refusal`` text) so the session workers of ``live/serve`` can report their
own CPU through ``cpu_seconds`` without this module knowing about them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

#: Frames a second a new peer is planned for (a browser camera's usual rate).
PLANNED_FPS = 30.0
#: CPU time per frame assumed before anything was measured (640x480, selfie, blur:
#: decode + segment + matte + composite + encode on one core here, rounded up).
PRIOR_FRAME_CPU_S = 0.030
#: Fraction of the idle CPU a new session may be planned into.
HEADROOM = 0.8
#: Event-loop lateness (ms, p90 over the window) above which the loop itself is full.
MAX_LOOP_LAG_MS = 40.0
WINDOW_S = 3.0
#: A session admitted this recently has not shown its cost in the measured window yet
#: (peers often arrive together): it is planned at the measured cost until it has.
UNSEEN_S = WINDOW_S + 1.0


@dataclass
class Sample:
    at: float          # monotonic seconds
    cpu: float         # this process's (+ reported workers') CPU seconds so far
    idle: float | None  # the machine's idle CPU seconds so far (all cores), None if unknown
    frames: int        # frames processed so far, over every session
    sessions: frozenset[str]  # the sessions processing frames at that moment


def machine_idle_seconds() -> float | None:
    """Idle + iowait CPU seconds of the whole machine since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Admission:
    """Decides, from measured load, whether one more video session fits."""

    def __init__(self, max_sessions: int = 8, *, measured: bool = True,
                 cores: int | None = None,
                 cpu_seconds: Callable[[], float] = time.process_time,
                 idle_seconds: Callable[[], float | None] = machine_idle_seconds):
        self.max_sessions = max_sessions
        # False: the count cap only (tests of other features on a shared, loaded machine)
        self.measured = measured
        self.cores = cores or os.cpu_count() or 1
        self._cpu_seconds, self._idle_seconds = cpu_seconds, idle_seconds
        self._samples: deque[Sample] = deque()
        self._lag_ms: deque[float] = deque(maxlen=30)
        self._frames_seen: dict[str, int] = {}
        self._frames_total = 0
        self._admitted: deque[float] = deque()  # monotonic times of recent admissions
        self._cost: float | None = None  # the last measured frame_cost

    def sample(self, frames: Mapping[str, int]) -> None:
        """Record the load now; ``frames``: frames processed so far, by session id (a
        session that ended simply drops out)."""
        now = time.monotonic()
        for sid, count in frames.items():
            self._frames_total += max(0, count - self._frames_seen.get(sid, 0))
        self._frames_seen = dict(frames)
        self._samples.append(Sample(now, self._cpu_seconds(), self._idle_seconds(),
                                    self._frames_total, frozenset(frames)))
        while len(self._samples) > 2 and now - self._samples[1].at >= WINDOW_S:
            self._samples.popleft()
        first, last = self._samples[0], self._samples[-1]
        steady = all(s.sessions == last.sessions for s in self._samples)
        if steady and last.frames > first.frames:
            self._cost = (last.cpu - first.cpu) / (last.frames - first.frames)

    def frame_cost(self) -> float | None:
        """CPU seconds per processed frame over the last steady window (frames
        flowing, the same sessions from end to end); None before there was one.

        Only a steady window prices a frame: one in which a session started
        (loading its model, decoding its first keyframe) or ended (closing its
        connection) carries CPU that belongs to no frame, and priced a 17 ms
        frame at 23 ms here. And a window with no frames keeps the last price:
        peers often come in together after a lull (a class joining, a
        benchmark's next step), and the prior in its place (size-blind, set for
        the costliest case) refused a second peer that fit.
        """
        return self._cost

    def idle_cores(self) -> float | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        if first.idle is None or last.idle is None or last.at <= first.at:
            return None
        return (last.idle - first.idle) / (last.at - first.at)

    def refusal(self, sessions: int, opening: int, overloaded: bool) -> str | None:
        """Why one more session may not start now, or None to admit it.

        ``sessions``: video sessions running; ``opening``: offers being answered
        (each counted at the measured cost); ``overloaded``: a running session
        is dropping frames that arrived too late.
        """
        busy = sessions + opening
        if busy >= self.max_sessions:
            return (f"the server is at capacity ({busy} video sessions, the most it "
                    f"takes is {self.max_sessions}); try again when one has ended")
        refusal = self._measured_refusal(busy, opening, overloaded)
        if refusal is None:
            self._admitted.append(time.monotonic())
        return refusal

    def _measured_refusal(self, busy: int, opening: int, overloaded: bool) -> str | None:
        if busy == 0 or not self.measured:
            return None  # nothing measured can say no to the first one
        if overloaded:
            return ("the server is at capacity: the running video sessions already fall "
                    "behind; try again when one has ended")
        if self._lag_ms and sorted(self._lag_ms)[int(0.9 * (len(self._lag_ms) - 1))] \
                > MAX_LOOP_LAG_MS:
            return "the server is at capacity (its event loop is saturated); try again later"
        idle = self.idle_cores()
        cost = self.frame_cost() or PRIOR_FRAME_CPU_S
        now = time.monotonic()
        while self._admitted and now - self._admitted[0] > UNSEEN_S:
            self._admitted.popleft()
        unseen = max(opening, len(self._admitted))  # the ones being answered are among them
        need = cost * PLANNED_FPS * (1 + unseen)
        if idle is not None and need > HEADROOM * idle:
            what = ("another video session needs" if unseen == 0 else
                    f"another video session, with the {unseen} started moments ago, needs")
            return (f"the server is at capacity: {what} ~{need:.1f} CPU cores and "
                    f"{idle:.1f} are idle; try again when one has ended")
        return None

    async def watch_loop(self, interval: float = 0.1) -> None:
        """Measure how late the event loop wakes up (run as a task for the server's life)."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            self._lag_ms.append(max(0.0, (time.monotonic() - t0 - interval) * 1e3))
