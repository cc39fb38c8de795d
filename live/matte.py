"""The matte stage: a low-resolution person alpha in, a clean full-resolution alpha out.

Four steps, in this order:

1. Temporal smoothing, at the model's resolution (cheap). A plain EMA trails
   every moving edge (ghosting). The default *adaptive* mode is a per-pixel,
   motion-aware filter: a mask change is believed at once only where it is
   large *and* the picture itself changed there; elsewhere (a static scene, a
   mask that wobbles by a few percent) history dominates. Segmentation noise
   on a still background is exactly a mask change without an image change, so
   flicker drops sharply while a moving edge is followed without a trail.
   History is first carried along the picture's own motion (optical flow on
   the grid, applied where the mask changed), so a slowly moving edge, whose
   mask changes too little a frame to pass the gate, is blended with where
   it is now rather than where it was.
2. Edge contrast: the model's edge is blurry (it runs at 256x144); it is
   steepened around 0.5 so that it does not leave a semi-transparent halo of
   the old background around the person.
3. Edge-aware upsampling with a fast guided filter (He & Sun 2015): the
   linear coefficients that map the frame's luminance to alpha are fitted on
   a small grid, then upsampled and applied to the full-resolution frame, so
   the edge follows the frame's real edges (hair, shoulders) instead of the
   model's coarse blocks. Snapping to the current frame's edges also removes
   most of the lag the smoothing would otherwise leave on moving edges, the
   more so as the coefficients are fitted on the picture averaged like the
   smoothed mask (``Matte._guide_for_fit``), so that the two agree.
4. Steady edges, at full resolution inside the edge band: a pixel that
   changes by much less than ``steady`` from one frame to the next moves only
   part of the way (``steady_take``), so the wobble the guided filter adds
   from frame to frame stays put while real motion passes at once.

Benchmarked choices (``python -m bench.quality``, DAVIS, selfie engine): the
image-motion gate without dilation won over a confidence weighting (|2a-1|),
which held moving edges back and cost boundary accuracy. The gate alone can
freeze a model error where the picture is still (seen on a webcam clip: the
mask kept a window the head had passed in front of), so a disagreement that
lasts ``adaptive_persist_frames`` frames is taken at once (a time
hysteresis: one-off flips are smoothed away, lasting changes are not).
The gate is luminance only, and an arm moving over a wall of its own
brightness barely changes it: the arm then lingered as a semi-transparent
ghost, and so did false positives the head left behind (a haze beside it).
So smoothing is asymmetric: where the new mask says background, a drop is
taken (almost) at once (``adaptive_release``); only rises and dips that stay
foreground are smoothed. That also let the hysteresis grow from 4 to 8
frames: better IoU, boundary F, flicker and lag all at once. (A colour
motion gate was tried too: less lag, but more flicker and 0.3 ms more.)

The guided filter may move an edge at most one pixel of the model's mask
(its result is clamped between the alpha eroded and dilated by that much:
5 px at 720p). Unclamped it dragged the model's edge onto any strong image
edge nearby (a door frame beside the person: a hard-edged strip of door),
became a plain box blur on flat dark areas (a 20-40 px dark fringe beside a
dark jacket), and with a large radius averaged the whole body (a
see-through person at feather 64).

Speed: everything but the last two steps runs on the model-sized grid; they
(the only full-resolution work) run only inside boxes around the blobs the
mask contains, as float32 OpenCV calls; nothing per-pixel in Python.
``reset`` forgets history (new stream, engine switch, seek); ``update``
changes parameters between two frames and keeps history.
"""

from __future__ import annotations


from typing import NamedTuple

import cv2
import numpy as np

from live.config import MatteSettings
from live.frames import I420, Pyramid, any_blocks, boxes_overlap

def grid_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The coefficient grid: ``long_side`` on the longer axis, never finer than the frame."""
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale)), max(2, round(height * scale))


def guided_upsample(alpha: np.ndarray, gray: np.ndarray, guide: np.ndarray,
                    radius: float, eps: float, reach: int | None = None,
                    boxes_out: list | None = None,
                    black: float = 0.0, span: float = 255.0,
                    prev: np.ndarray | None = None, steady: float = 0.0) -> np.ndarray:
    """Fast guided filter: fit q = a*I + b on the grid, apply it to the full-res frame.

    ``alpha`` is any resolution; ``gray`` is the frame's uint8 luminance (or the BGR frame),
    whose values mean (value - black) / span in [0, 1] (an I420 frame's Y plane:
    16 and 219); ``guide`` is the same shrunk to the grid, in [0, 1]; ``radius`` is in grid
    pixels. The guide is the luminance, not colour: a colour guide needs a
    3x3 solve per pixel, too slow for the budget.

    The result is clamped between the alpha eroded and dilated by ``reach``
    grid cells (default: one pixel of ``alpha``, the model's resolution, so
    5 px at 720p whatever ``guide_size``): the filter may move an edge onto a
    nearby image edge (that is its job) but no further, and it cannot change
    alpha away from the edge (see the module docstring for what it did
    unclamped).

    ``prev`` and ``steady``: the last frame's result, and ``steady_take``'s
    threshold (see ``apply_coefficients``).
    """
    gh, gw = guide.shape
    p = cv2.resize(alpha, (gw, gh), interpolation=cv2.INTER_LINEAR)
    r = max(1, round(radius))
    ksize = (2 * r + 1, 2 * r + 1)
    mean_i = cv2.blur(guide, ksize)
    mean_p = cv2.blur(p, ksize)
    cov_ip = cv2.blur(guide * p, ksize) - mean_i * mean_p
    var_i = cv2.blur(guide * guide, ksize) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    a = cv2.blur(a, ksize) * (1.0 / span)  # fold the guide's scale in: q = a * gray + b
    b = cv2.blur(b, ksize)
    if black:
        b -= a * np.float32(black)
    if reach is None:
        reach = max(1, round(gw / alpha.shape[1]))
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1))
    np.clip(p, 0.0, 1.0, out=p)
    return apply_coefficients(a, b, gray, cv2.erode(p, square), cv2.dilate(p, square),
                              boxes_out, prev, steady)


ZERO = 1e-4  # coefficients below this (in alpha units) count as "no person here"
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)


def blob_boxes(mask: np.ndarray, margin: int = 1, coarse: int = 4,
               max_fraction: float = 0.7) -> list[Box]:
    """Disjoint boxes, in ``mask`` cells, covering every true cell of ``mask``.

    One box per blob (a person, a stray false positive), grown by ``margin``
    cells and merged where they overlap; one box over the whole mask once
    they cover most of it (then one big call beats several small ones). The
    blobs are found on ``coarse`` x ``coarse`` blocks: labelling is then
    cheap, and the boxes only grow by less than a block.
    """
    mh, mw = mask.shape
    n, _, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        any_blocks(mask, coarse), 8, cv2.CV_32S, cv2.CCL_SAUF)
    boxes = [(max(0, x * coarse - margin), max(0, y * coarse - margin),
              min(mw, (x + bw) * coarse + margin), min(mh, (y + bh) * coarse + margin))
             for x, y, bw, bh, _ in stats[1:n]]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if boxes_overlap(a, b):
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]),
                                max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) > max_fraction * mw * mh:
        return [(0, 0, mw, mh)]
    return boxes


def apply_coefficients(a: np.ndarray, b: np.ndarray, gray: np.ndarray,
                       lo: np.ndarray | None = None, hi: np.ndarray | None = None,
                       boxes_out: list | None = None, prev: np.ndarray | None = None,
                       steady: float = 0.0) -> np.ndarray:
    """q = a * gray + b at full resolution, with a and b bilinearly upsampled,
    clipped to [lo, hi] (grid maps, upsampled the same way; default [0, 1]).
    ``gray`` is the uint8 luminance, or the BGR frame (converted box by box).

    Only the boxes around the person (and any other blob) are computed: far
    from them a and b (or hi) are 0, so q is 0 there. In webcam framing the
    boxes are a fraction of the frame, and this full-resolution step is most
    of the matte's cost. Each box upsamples its own crop of the grid, with two
    empty cells of margin, so when the frame is a whole multiple of the grid
    (720p on the default grid) its pixels equal those of a whole-frame resize.
    The full-resolution boxes are appended to ``boxes_out`` when given.

    With ``prev`` (the last result, the same size) and ``steady`` > 0, each
    box is first moved back towards ``prev`` by ``steady_take``, then
    clamped: only the band between ``lo`` and ``hi``, where the edge may
    move, is held back. Elsewhere the alpha is what the mask says at once:
    where hi is 0 (no person, as outside the boxes) a drop, where lo is 1
    (inside the person) a rise. Held back everywhere, a moving arm left
    streaks of alpha 0.8-0.9 across the body that took a second to fill in.
    """
    gh, gw = a.shape
    h, w = gray.shape[:2]
    if hi is not None:
        active = hi > ZERO  # q <= hi: nothing to compute where hi is 0
    else:
        active = (np.abs(a) * 255.0 > ZERO) | (np.abs(b) > ZERO)
    q = np.zeros((h, w), np.float32)
    sx, sy = w / gw, h / gh
    for cx0, cy0, cx1, cy1 in blob_boxes(active, margin=2):
        # The blob was found on blocks of cells: shrink its box to the cells it really
        # holds, two empty cells of margin kept (a smaller box, the same pixels in it).
        x, y, bw, bh = cv2.boundingRect(active.view(np.uint8)[cy0:cy1, cx0:cx1])
        if bw == 0:
            continue
        cx0, cx1 = int(max(cx0, cx0 + x - 2)), int(min(cx1, cx0 + x + bw + 2))
        cy0, cy1 = int(max(cy0, cy0 + y - 2)), int(min(cy1, cy0 + y + bh + 2))
        x0, y0 = round(cx0 * sx), round(cy0 * sy)
        x1 = w if cx1 == gw else round(cx1 * sx)
        y1 = h if cy1 == gh else round(cy1 * sy)
        size = (x1 - x0, y1 - y0)
        if boxes_out is not None:
            boxes_out.append((x0, y0, x1, y1))

        def up(grid: np.ndarray) -> np.ndarray:
            return cv2.resize(grid[cy0:cy1, cx0:cx1], size, interpolation=cv2.INTER_LINEAR)

        box = q[y0:y1, x0:x1]  # a view: OpenCV writes the result straight into q
        crop = gray[y0:y1, x0:x1]
        if crop.ndim == 3:  # the BGR frame: its luminance is only needed here
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        cv2.multiply(up(a), crop, dst=box, dtype=cv2.CV_32F)
        cv2.add(box, up(b), dst=box)
        if prev is not None and steady > 0:
            steady_take(box, prev[y0:y1, x0:x1], steady)
        if hi is None:
            cv2.threshold(box, 1.0, 1.0, cv2.THRESH_TRUNC, dst=box)  # clip to [0, 1], in place
            cv2.threshold(box, 0.0, 0.0, cv2.THRESH_TOZERO, dst=box)
        else:  # lo and hi lie in [0, 1]
            cv2.max(box, up(lo), dst=box)
            cv2.min(box, up(hi), dst=box)
    return q


GUIDE_AVERAGE = 0.2  # weight of the new frame in the guided filter's fitting luminance
STEADY_MIN = 0.02  # steady_take moves a pixel at least this share of its change


def steady_take(new: np.ndarray, old: np.ndarray, threshold: float) -> None:
    """Move ``new`` back towards ``old``, in place: to old + w * (new - old), with
    w = (change / threshold) ** 4 + ``STEADY_MIN``, at most 1.

    Most of the flicker the temporal filter leaves is made at full resolution:
    the guided filter's coefficients, fitted anew each frame, wobble an edge by
    a few hundredths (smoothing the 256x144 mask more, or holding it, does not
    reach it). A change of a pixel well under ``threshold`` is that wobble and
    barely moves it; a change near or over it is an edge moving and is taken
    (almost) whole. The weight is a smooth function of the change, so
    neighbouring pixels that change alike move alike: a hard hold (keep a
    pixel while it changes less than the threshold) drew faint contour lines
    and banding on webcam clips where neighbours were held on different
    frames. The floor lets an old value fade out (in tens of frames, never
    stuck). Six float32 OpenCV passes over the box.
    """
    change = cv2.subtract(new, old)
    weight = cv2.multiply(change, change, scale=1.0 / (threshold * threshold))
    cv2.multiply(weight, weight, dst=weight)
    # w - 1, in [STEADY_MIN - 1, 0]: new + (w - 1) * change = old + w * change, which
    # OpenCV does in one pass (the floor is added rather than a max taken: half the time)
    cv2.addWeighted(weight, 1.0, weight, 0.0, STEADY_MIN - 1.0, dst=weight)
    cv2.threshold(weight, 0.0, 0.0, cv2.THRESH_TRUNC, dst=weight)
    cv2.accumulateProduct(weight, change, new)


TINY = 1e-4  # alpha under this is 0 (invisible: a fortieth of a grey level)
RELEASE_BELOW = 0.3  # a new alpha under this counts as "background now" for adaptive_release
# Motion compensation estimates the picture's motion with DIS optical flow on the whole
# grid, down to half its size on patches that do not overlap (DIS's fastest preset stops
# at a quarter): 0.5 ms of one core at 256x144, against 0.3 ms at a quarter, which had
# 0.6 more lag on DAVIS, and 1.3 ms with the preset's overlapping patches, which scored
# the same. A flow only in a box around the people scored the same too, and a box that
# changes size from frame to frame made DIS slower, not faster.
FLOW_FINEST_SCALE = 1
FLOW_PATCH_STRIDE = 8
FLOW_MIN_SIDE = 8  # DIS's patches are 8 px
# The flow runs on alphas of at most FLOW_MAX_CELLS cells: the selfie engine's grid (256
# on its long side). SAM 2's alpha is 512x512 on a CPU and 1024x1024 on a GPU: there,
# even with the flow estimated on 256 cells a side and stretched, moving the history
# cost 2.8 and 10.6 ms a frame more than the same matte without it; and SAM 2 keeps its
# masks steady with its own memory.
FLOW_MAX_CELLS = 256 * 256


class TemporalFilter:
    """Per-pixel smoothing of successive alphas at the model's resolution."""

    def __init__(self, settings: MatteSettings):
        self.settings = settings
        self.state: np.ndarray | None = None
        self.prev_guide: np.ndarray | None = None
        self.disagree: np.ndarray | None = None  # frames in a row the mask differed a lot
        self._flow: cv2.DISOpticalFlow | None = None
        self._cells: np.ndarray | None = None  # each grid cell's own (x, y), for remap

    def reset(self) -> None:
        self.state = None
        self.prev_guide = None
        self.disagree = None

    def apply(self, alpha: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
        """The smoothed alpha; ``guide`` is the frame's luminance at alpha's size, in [0, 1]."""
        s = self.settings
        prev, prev_guide = self.state, self.prev_guide
        self.prev_guide = guide
        if s.smoothing == "off" or prev is None or prev.shape != alpha.shape:
            self.state = alpha.copy()
            return self.state
        if s.smoothing == "ema":
            weight: np.ndarray | float = s.ema
        else:
            if s.motion_compensation and guide is not None and prev_guide is not None \
                    and prev_guide.shape == guide.shape:
                prev = self._follow_motion(prev, alpha, guide, prev_guide)
            weight = self._adaptive_weight(alpha, prev, guide, prev_guide)
        out = alpha - prev  # prev + w * (new - prev)
        out *= weight
        out += prev
        cv2.threshold(out, TINY, 0.0, cv2.THRESH_TOZERO, dst=out)  # a decay ends at 0
        self.state = out
        return out

    def _follow_motion(self, prev: np.ndarray, new: np.ndarray, guide: np.ndarray,
                       prev_guide: np.ndarray) -> np.ndarray:
        """The smoothed alpha moved along with the picture since the last frame.

        Blending a moving edge with where it *was* is what makes smoothing lag
        (and smear a limb). With history first carried along the picture's
        motion, the blend compares like with like: history can weigh more
        (``adaptive_min_weight`` went 0.15 -> 0.05) for less flicker and less
        lag at once. The gate in ``_adaptive_weight`` still reads the raw picture
        change, not the compensated one: where the flow is wrong (an occlusion, a
        blur) the new mask is then still believed. DAVIS, ``python -m
        bench.quality``: see the README's "Motion-compensated smoothing".
        """
        gh, gw = prev.shape
        if min(gw, gh) < FLOW_MIN_SIDE or gw * gh > FLOW_MAX_CELLS:
            return prev
        if self._flow is None:
            self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
            self._flow.setFinestScale(FLOW_FINEST_SCALE)
            self._flow.setPatchStride(FLOW_PATCH_STRIDE)
        # Only where the mask changed more than noise: each move resamples history, and
        # resampling a still edge every frame would blur it (and cost flicker).
        changed = cv2.absdiff(new, prev) > self.settings.adaptive_change_lo
        if not changed.any():
            return prev
        # where each pixel of the new picture was in the last one
        flow = self._flow.calc(_gray8(guide), _gray8(prev_guide), None)
        flow += self._grid(gw, gh)
        followed = cv2.remap(prev, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.where(changed, followed, prev)

    def _grid(self, width: int, height: int) -> np.ndarray:
        if self._cells is None or self._cells.shape[:2] != (height, width):
            xs, ys = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))
            self._cells = np.dstack([xs, ys])
        return self._cells

    def _adaptive_weight(self, new: np.ndarray, prev: np.ndarray, guide: np.ndarray | None,
                         prev_guide: np.ndarray | None) -> np.ndarray:
        """Weight of the new mask: ``min_weight`` for noise, 1 for real motion.

        The mask change is scaled by how much the picture changed at that
        pixel (saturating at ``adaptive_motion``), then mapped through a ramp
        between ``change_lo`` and ``change_hi``.
        """
        s = self.settings
        change = cv2.absdiff(new, prev)
        differs = change > s.adaptive_persist_change if s.adaptive_persist_frames > 0 else None
        lo = s.adaptive_change_lo
        hi = max(s.adaptive_change_hi, lo + 1e-3)
        # The ramp from lo to hi, mapped onto [min_weight, 1] (one affine step, then a clip).
        gain = (1.0 - s.adaptive_min_weight) / (hi - lo)
        if s.adaptive_motion > 0 and guide is not None and prev_guide is not None \
                and prev_guide.shape == guide.shape:
            motion = cv2.absdiff(guide, prev_guide)  # saturates at adaptive_motion
            cv2.threshold(motion, s.adaptive_motion, s.adaptive_motion, cv2.THRESH_TRUNC,
                          dst=motion)
            change *= motion
            change *= gain / s.adaptive_motion
        else:
            change *= gain
        change += s.adaptive_min_weight - lo * gain
        cv2.threshold(change, 1.0, 1.0, cv2.THRESH_TRUNC, dst=change)
        np.maximum(change, s.adaptive_min_weight, out=change)
        if s.adaptive_release > 0:
            # Where the model now says background, a drop is let through fast whatever the
            # picture did: an arm moving over a wall of its own brightness barely changes
            # the luminance, so the gate above stays shut and the arm would linger as a
            # semi-transparent ghost. A rise (and a dip that stays foreground) is still
            # smoothed, so this costs little flicker.
            released = (new < RELEASE_BELOW) & (new < prev)
            np.maximum(change, released * np.float32(s.adaptive_release), out=change)
        if differs is not None:
            # The gate can freeze an error where the picture is still (a mask that
            # once spread over a window the head passed): a disagreement that
            # persists is believed, so nothing lingers more than a few frames.
            if self.disagree is None or self.disagree.shape != new.shape:
                self.disagree = np.zeros(new.shape, np.uint16)
            count = self.disagree  # frames in a row, saturating at the limit
            count += 1
            np.multiply(count, differs, out=count)  # back to 0 where the mask agreed
            cv2.min(count, s.adaptive_persist_frames, dst=count)  # (np.minimum: 4x slower)
            np.maximum(change, np.float32(1.0), out=change,
                       where=count >= s.adaptive_persist_frames)
        return change


def _gray8(gray: np.ndarray) -> np.ndarray:
    """A [0, 1] float luminance as the uint8 picture the optical flow takes."""
    return cv2.convertScaleAbs(gray, alpha=255.0)


class Matted(NamedTuple):
    """What ``Matte.apply`` gives: the alpha, and the disjoint full-resolution boxes
    outside which it is 0 (None: not known). The matte computes only inside them
    anyway; handed to the compositor, they spare it a search over the whole alpha."""

    alpha: np.ndarray
    boxes: list[Box] | None


class Matte:
    """Low-res alpha + full-res frame → full-res alpha, smoothed over time."""

    def __init__(self, settings: MatteSettings | None = None):
        self.settings = settings or MatteSettings()
        self.temporal = TemporalFilter(self.settings)
        self._fit_guide: np.ndarray | None = None  # see ``_guide_for_fit``
        self._prev: np.ndarray | None = None  # the last alpha, for ``steady_take``

    def update(self, settings: MatteSettings) -> None:
        """New parameters from the next frame on; history is kept so nothing jumps."""
        self.settings = settings
        self.temporal.settings = settings

    def reset(self) -> None:
        """Forget history: the next frame's mask is taken as is."""
        self.temporal.reset()
        self._fit_guide = self._prev = None

    def apply(self, alpha_lowres: np.ndarray, frame: np.ndarray | I420 | Pyramid) -> Matted:
        """Float32 alpha in [0, 1] at the frame's size (a new array each call), and its boxes.

        ``frame``: a BGR image, or the frame's ``Pyramid`` (the guide is one of its copies).
        """
        if alpha_lowres.ndim != 2 or alpha_lowres.size == 0:
            raise ValueError(f"alpha must be a non-empty 2-D array, got shape "
                             f"{alpha_lowres.shape}")
        frame = Pyramid.of(frame)
        s = self.settings
        # Values under TINY become 0 (a copy: the caller's array is left alone). The
        # selfie model emits many 1e-30s and even denormals; arithmetic on denormals is
        # ~100x slower on x86, and the smoothing would keep making more of them.
        alpha = cv2.threshold(np.asarray(alpha_lowres, dtype=np.float32), TINY, 0.0,
                              cv2.THRESH_TOZERO)[1]
        w, h = frame.size
        ah, aw = alpha.shape
        gw, gh = grid_size(w, h, s.guide_size)
        # The guide is the luminance of the frame shrunk to the grid (a small image: the
        # full-resolution luminance is only ever computed inside the person boxes). With
        # the default grid it is the selfie model's input, already made.
        guide = frame.gray(gw, gh) * (1.0 / 255.0)
        temporal_guide = None
        if s.smoothing == "adaptive" and s.adaptive_motion > 0:
            temporal_guide = guide if guide.shape == alpha.shape else \
                cv2.resize(guide, (aw, ah), interpolation=cv2.INTER_AREA)
        smoothed = self.temporal.apply(alpha, temporal_guide)
        if s.edge_contrast != 1.0:  # (a - 0.5) * gain + 0.5, on a copy: history stays soft
            smoothed = smoothed * s.edge_contrast + 0.5 * (1.0 - s.edge_contrast)
            np.clip(smoothed, 0.0, 1.0, out=smoothed)
        if s.feather <= 0:
            out = cv2.resize(smoothed, (w, h), interpolation=cv2.INTER_LINEAR)
            np.clip(out, 0.0, 1.0, out=out)
            self._prev = None
            return Matted(out, None)
        # steady edges hold back the band where the guided filter may move the edge; with
        # smoothing off there is no history at all
        steady = s.steady if s.smoothing != "off" else 0.0
        prev = self._prev if steady > 0 and self._prev is not None \
            and self._prev.shape == (h, w) else None
        boxes: list[Box] = []
        luma, black, span = frame.luma
        out = guided_upsample(smoothed, luma, self._guide_for_fit(guide), s.feather * gw / w,
                              s.feather_eps, boxes_out=boxes, black=black, span=span,
                              prev=prev, steady=steady)
        self._prev = out  # the stages after the matte only read it
        return Matted(out, boxes)

    def _guide_for_fit(self, guide: np.ndarray) -> np.ndarray:
        """The luminance the guided filter fits its coefficients on: the frame's own,
        or, with smoothing, the frame's averaged over the last few frames
        (weight ``GUIDE_AVERAGE`` on the new one) and never more than
        ``guide_memory`` grey levels from it.

        The filter fits alpha ~ a * luminance + b in each window and applies it
        to the full-resolution frame. The smoothed mask describes the last few
        frames, not this one: fitted against this frame's luminance, a moving
        edge sits in different places in the two, the fit finds little
        relation (a -> 0), and the result falls back to the smoothed mask's
        blurry, trailing edge. Fitted against a luminance averaged like the
        mask, the two agree, the fit keeps its edge, and applied to the
        current frame it puts the edge where the picture has it now. DAVIS
        (``bench.quality``'s functions, steady edges off): lag 33.3 -> 30.7
        for flicker 1.17 -> 1.21. The bound keeps a change of the light from
        leaving the fit on a picture that is no longer there.
        """
        s = self.settings
        avg = self._fit_guide
        if s.smoothing == "off" or s.guide_memory <= 0:
            self._fit_guide = None
            return guide
        if avg is None or avg.shape != guide.shape:
            self._fit_guide = guide.copy()
            return guide
        cv2.addWeighted(guide, GUIDE_AVERAGE, avg, 1.0 - GUIDE_AVERAGE, 0.0, dst=avg)
        bound = np.float32(s.guide_memory / 255.0)
        cv2.max(avg, guide - bound, dst=avg)
        cv2.min(avg, guide + bound, dst=avg)
        return avg
