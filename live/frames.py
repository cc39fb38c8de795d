"""The unit that flows through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class EndOfStream(Exception):
    """A source has no more frames (end of file, closed track)."""


@dataclass
class Frame:
    """One captured frame: BGR uint8 HxWx3 plus when it was taken.

    ``pts`` is the media timestamp in seconds (file or RTP clock); ``captured``
    is ``time.monotonic()`` when the source produced it, so every later stage
    can tell how stale it is. ``meta`` carries source-specific extras (e.g. the
    incoming WebRTC frame's pts and time_base, so the outgoing one keeps them).
    """

    image: np.ndarray
    index: int
    pts: float
    captured: float = field(default_factory=time.monotonic)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.image.shape[:2]
        return w, h
