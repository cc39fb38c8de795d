"""Who is in the picture, frame to frame: where to look, and who must not vanish.

The selfie engine keeps one ``Track`` per person it found: a box (in cells of
its output grid), the recent areas of the person's mask, and a copy of the
mask and of the picture inside the box from the last frame it trusted. The
boxes tell the engine where to crop next frame (``PersonTracks.union``).

The tracks are also the *dropout guard*. The selfie model sometimes loses a
person for a frame or a few (on a webcam-like clip, a child sitting on a bed
dropped to a maximum alpha of 0.3-0.5 on ~10 % of the frames) and a matte
that believes every drop to background cuts them out at once. A person who
really leaves changes the picture where they were; a model that loses them
does not. So when a track's area falls under ``DROP_RATIO`` of its running
median while the luminance inside its box moved less than ``STILL_CHANGE``
since the trusted frame, the engine re-checks (another pass of the model)
and, if the person is still missing, holds the trusted mask. A hold lasts at
most ``hold_frames`` frames: a drop that persists, or any real change of the
picture there, is believed, so a person who leaves is gone within a few frames.

The other way round, someone new whom only the engine's whole-frame refresh saw,
outside the crop where the tracked people are, is shown from their second sighting
on (``pending``). The refresh runs every few frames; a false positive it finds
there (a railing on DAVIS parkour) used to flash into the picture for the one
frame before the crop looked away from it again. A person really coming in is
seen again on the next frame and shown one frame (33 ms) later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from live.frames import any_blocks, boxes_overlap
from live.subjects import MIN_AREA_FRACTION, THRESHOLD

DROP_RATIO = 0.3  # a mask under this share of its running median has "dropped out"
# Mean |change| of luminance (0-1) inside the box since the trusted frame under which the
# picture "barely changed": sensor noise and compression stay near 0.01; a person leaving
# a box they filled moves it by several times this.
STILL_CHANGE = 0.03
# Only a mask this large (share of the frame) is a person the guard keeps: a 720p person
# 72 x 128 px, or a distant one standing a third of the frame tall. Smaller blobs are props
# and false positives (a patch of floor on a webcam clip), which may come and go.
PERSON_FRACTION = 0.01
HISTORY = 30  # frames of area kept for the running median (1 s at 30 fps)
BLOCK = 2  # people are labelled on blocks of this many cells a side (see _blobs)
PAD = 0.15  # a track looks for its person in its box grown by this share of its size

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in grid cells, end exclusive


@dataclass
class Track:
    box: Box
    areas: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    alpha: np.ndarray | None = None  # the mask inside ``box`` at the last trusted frame
    gray: np.ndarray | None = None  # the luminance inside ``box`` then
    held: int = 0  # frames in a row this track's mask was held

    def region(self, shape: tuple[int, int]) -> Box:
        """Where to look for the person now (``grown``)."""
        return grown(self.box, shape)


def grown(box: Box, shape: tuple[int, int]) -> Box:
    """``box`` grown by ``PAD`` of its size on each side, inside a grid of ``shape``."""
    x0, y0, x1, y1 = box
    px, py = int((x1 - x0) * PAD) + 1, int((y1 - y0) * PAD) + 1
    return max(0, x0 - px), max(0, y0 - py), min(shape[1], x1 + px), min(shape[0], y1 + py)


def area_in(fg: np.ndarray, box: Box) -> int:
    x0, y0, x1, y1 = box
    return int(np.count_nonzero(fg[y0:y1, x0:x1]))


class PersonTracks:
    """The tracked people of one stream, and the dropout guard over them."""

    def __init__(self) -> None:
        self.tracks: list[Track] = []
        self.pending: list[Box] = []  # someone new seen once, outside the crop: not shown yet

    def reset(self) -> None:
        self.tracks = []
        self.pending = []

    def union(self) -> Box | None:
        """One box around every tracked person (None: nobody is tracked)."""
        if not self.tracks:
            return None
        boxes = np.array([t.box for t in self.tracks])
        return (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()),
                int(boxes[:, 3].max()))

    def _dropped(self, track: Track, fg: np.ndarray, gray: np.ndarray) -> bool:
        """Has this person's mask dropped out while the picture there stood still?"""
        if not track.areas or track.gray is None:
            return False
        usual = float(np.median(track.areas))
        if usual < PERSON_FRACTION * fg.size or area_in(fg, track.region(fg.shape)) >= DROP_RATIO * usual:
            return False
        x0, y0, x1, y1 = track.box
        change = cv2.absdiff(gray[y0:y1, x0:x1], track.gray)
        return float(change.mean()) < STILL_CHANGE

    def suspects(self, alpha: np.ndarray, gray: np.ndarray) -> list[Track]:
        """Tracks whose person seems lost by the model, not gone: worth a second look."""
        if alpha.shape != gray.shape:
            return []
        fg = alpha > THRESHOLD
        return [t for t in self.tracks if self._dropped(t, fg, gray)]

    def update(self, alpha: np.ndarray, gray: np.ndarray, hold_frames: int,
               crop: Box | None = None) -> np.ndarray:
        """The alpha with dropped-out people held (``hold_frames`` at most), and the
        tracks moved to this frame's people. ``gray``: luminance in [0, 1] at alpha's size.

        ``crop``: where this frame's crop pass looked (None: the whole frame was
        the pass). Someone new wholly outside it, while others are tracked, is
        taken out of the alpha and left ``pending``, unless they were pending
        already: then they are shown."""
        if alpha.shape != gray.shape:
            raise ValueError(f"alpha {alpha.shape} and gray {gray.shape} differ in size")
        shape = alpha.shape
        fg = alpha > THRESHOLD
        held: list[Track] = []
        for track in self.tracks:
            if self._dropped(track, fg, gray) and track.held < hold_frames:
                x0, y0, x1, y1 = track.box
                np.maximum(alpha[y0:y1, x0:x1], track.alpha, out=alpha[y0:y1, x0:x1])
                track.held += 1
                held.append(track)
        if held:
            fg = alpha > THRESHOLD
        n, labels, stats = _blobs(fg)
        big = stats[:, cv2.CC_STAT_AREA] >= max(1.0, MIN_AREA_FRACTION * alpha.size)
        big[0] = False
        claimed = np.zeros(n, bool)
        kept: list[Track] = []
        for track in held + [t for t in self.tracks if t not in held]:  # held ones claim first
            mine = np.flatnonzero(np.bincount(_labels_over(labels, track.region(shape)).ravel(),
                                              minlength=n))
            mine = mine[big[mine] & ~claimed[mine]]
            if track in held:
                claimed[mine] = True
                kept.append(track)
                continue
            if len(mine) == 0:
                continue  # the person left (or the hold ran out): forget them
            claimed[mine] = True
            track.box = _bounds(stats[mine])
            self._trust(track, alpha, fg, gray)
            kept.append(track)
        pending: list[Box] = []
        for label in np.flatnonzero(big & ~claimed):  # someone new
            box = _bounds(stats[[label]])
            if crop is not None and self.tracks and not boxes_overlap(box, crop) and not any(
                    boxes_overlap(box, grown(p, shape)) for p in self.pending):
                pending.append(box)
                x0, y0, x1, y1 = box  # the blob's own cells, in its box, out of the alpha
                theirs = np.repeat(np.repeat(_labels_over(labels, box) == label, BLOCK, 0),
                                   BLOCK, 1)
                alpha[y0:y1, x0:x1][theirs[:y1 - y0, :x1 - x0]] = 0.0
                continue
            track = Track(box)
            self._trust(track, alpha, fg, gray)
            kept.append(track)
        self.tracks = kept
        self.pending = pending
        return alpha

    @staticmethod
    def _trust(track: Track, alpha: np.ndarray, fg: np.ndarray, gray: np.ndarray) -> None:
        x0, y0, x1, y1 = track.box
        track.areas.append(area_in(fg, track.box))
        track.alpha = alpha[y0:y1, x0:x1].copy()
        track.gray = gray[y0:y1, x0:x1].copy()
        track.held = 0


def _blobs(fg: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The connected blobs of ``fg``, labelled on ``BLOCK`` x ``BLOCK`` blocks of cells
    (a block is set when any of its cells is): labelling the engine's whole grid cost
    0.15 ms a frame, a fortieth of the frame's budget, for boxes no finer than a block
    needs to be (the crop adds a margin of a fifth of the person). ``labels`` are on
    blocks; ``stats`` in cells, the area counting whole blocks."""
    h, w = fg.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(any_blocks(fg, BLOCK),
                                                           connectivity=8)
    stats = stats * BLOCK
    stats[:, cv2.CC_STAT_AREA] *= BLOCK
    stats[:, cv2.CC_STAT_WIDTH] = np.minimum(stats[:, cv2.CC_STAT_WIDTH],
                                             w - stats[:, cv2.CC_STAT_LEFT])
    stats[:, cv2.CC_STAT_HEIGHT] = np.minimum(stats[:, cv2.CC_STAT_HEIGHT],
                                              h - stats[:, cv2.CC_STAT_TOP])
    return n, labels, stats


def _labels_over(labels: np.ndarray, box: Box) -> np.ndarray:
    """The block labels (``_blobs``) of the blocks that cover ``box`` (in cells)."""
    x0, y0, x1, y1 = box
    return labels[y0 // BLOCK:-(-y1 // BLOCK), x0 // BLOCK:-(-x1 // BLOCK)]


def _bounds(stats: np.ndarray) -> Box:
    """The box around connected components given by their ``stats`` rows."""
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    return (int(x.min()), int(y.min()), int((x + stats[:, cv2.CC_STAT_WIDTH]).max()),
            int((y + stats[:, cv2.CC_STAT_HEIGHT]).max()))
