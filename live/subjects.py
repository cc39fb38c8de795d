"""Which people stay in the picture: everyone, or only the main subject.

The selfie engine segments every person it sees. In "main" mode only one
connected blob of the low-resolution alpha is kept: the largest when the
choice is made. Picking "the largest blob" every frame is not enough: two
people of similar size would swap places from frame to frame, and a
bystander walking up to the camera would take the picture. So the chosen blob
is *tracked*: each frame the blob that best overlaps the previous choice wins,
however big another one is.

The main subject is not given up at the first missing frame either: when no
blob overlaps the last choice (the model lost the person for a frame, or they
moved fast), the last choice is remembered, and searched for in a widening
neighbourhood, for ``switch_frames`` frames; only a subject missing that long
is replaced by the largest blob. Meanwhile nobody is shown: a bystander never
stands in for the main person.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

THRESHOLD = 0.5  # a pixel belongs to a blob when its alpha is above this
MIN_AREA_FRACTION = 0.002  # blobs smaller than this share of the image are noise
SOFT_EDGE_PX = 3  # keep the soft alpha this far around the chosen blob
SEARCH_FRACTION = 0.02  # a missing subject is searched this share of the frame further per frame


class SubjectSelector:
    """Keeps every person ("all") or only the tracked main subject ("main")."""

    def __init__(self, mode: Literal["all", "main"] = "all", switch_frames: int = 10):
        if mode not in ("all", "main"):
            raise ValueError(f"subjects mode must be 'all' or 'main', got {mode!r}")
        self.mode = mode
        self.switch_frames = switch_frames
        self._chosen: np.ndarray | None = None  # bool mask of the last choice
        self._missing_frames = 0  # frames in a row nothing overlapped the last choice

    def reset(self) -> None:
        """Forget the tracked subject: the next frame picks the largest blob afresh."""
        self._chosen = None
        self._missing_frames = 0

    def apply(self, alpha_lowres: np.ndarray) -> np.ndarray:
        """The alpha with every blob but the main subject's set to 0 (same shape, float32)."""
        if self.mode == "all":
            return alpha_lowres
        alpha = np.asarray(alpha_lowres, dtype=np.float32)
        fg = (alpha > THRESHOLD).view(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        big = np.flatnonzero(areas >= MIN_AREA_FRACTION * alpha.size) + 1
        if len(big) == 0:
            self._missing_frames += 1
            if self._missing_frames > self.switch_frames:
                self.reset()
            return np.zeros_like(alpha)
        label = self._pick(labels, big, stats)
        if label is None:  # nobody, or the main subject is missing for now
            return np.zeros_like(alpha)
        keep = labels == label
        self._chosen = keep
        return self._cut(alpha, labels, keep)

    def _pick(self, labels: np.ndarray, big: np.ndarray, stats: np.ndarray) -> int | None:
        """The blob to keep; None while the main subject is missing (nothing is kept)."""
        largest = int(big[np.argmax(stats[big, cv2.CC_STAT_AREA])])
        if self._chosen is None or self._chosen.shape != labels.shape:
            self._missing_frames = 0
            return largest
        chosen = self._chosen
        if self._missing_frames:  # look wider: they may have moved while missing
            reach = 1 + round(SEARCH_FRACTION * max(labels.shape) * self._missing_frames)
            k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1,) * 2)
            chosen = cv2.dilate(chosen.view(np.uint8), k).astype(bool)
        overlap = np.bincount(labels[chosen], minlength=labels.max() + 1)
        tracked = int(big[np.argmax(overlap[big])])
        if overlap[tracked] == 0:  # the subject is missing (lost for a moment, or left)
            self._missing_frames += 1
            if self._missing_frames <= self.switch_frames:
                return None
            self._missing_frames = 0
            return largest
        self._missing_frames = 0
        return tracked

    @staticmethod
    def _cut(alpha: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Keep the soft edge around the chosen blob; zero the other blobs and their edges."""
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SOFT_EDGE_PX + 1,) * 2)
        region = cv2.dilate(keep.view(np.uint8), k).astype(bool)
        others = (labels > 0) & ~keep
        region &= ~cv2.dilate(others.view(np.uint8), k).astype(bool) | keep
        return np.where(region, alpha, 0.0).astype(np.float32)
