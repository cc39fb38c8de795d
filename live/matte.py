"""The matte stage: a low-resolution person alpha in, a clean full-resolution alpha out.

Two jobs, in this order:

1. Temporal smoothing, at the model's resolution (cheap). A plain EMA trails
   every moving edge (ghosting). The default *adaptive* mode is a per-pixel
   motion-aware filter: small changes are treated as noise and smoothed hard,
   large changes are treated as motion and taken at once, and where the new
   mask is uncertain (close to 0.5) history gets more say. Flicker goes down
   without the lag of an EMA.
2. Edge-aware upsampling with a fast guided filter (He & Sun 2015): the
   linear coefficients that map the frame's luminance to alpha are fitted on
   a small grid, then upsampled and applied to the full-resolution frame. The
   edge follows the frame's real edges (hair, shoulders) instead of the
   blocky model output, and costs a few full-resolution passes.

All the full-resolution work is float32 OpenCV calls; nothing per-pixel in
Python. ``reset`` forgets history (new stream, engine switch, seek);
``update`` changes parameters between two frames without dropping history.
"""

from __future__ import annotations

import cv2
import numpy as np

from live.config import MatteSettings


def guided_upsample(alpha_low: np.ndarray, frame_bgr: np.ndarray, radius: int, eps: float,
                    grid_long_side: int) -> np.ndarray:
    """Alpha at the frame's size whose edges follow the frame (fast guided filter).

    ``radius`` is in full-resolution pixels; the coefficients are fitted on a
    grid whose long side is ``grid_long_side`` (never finer than the frame).
    The guide is the luminance: a colour guide is sharper on some edges but
    needs a 3x3 solve per pixel, too slow for the budget.
    """
    h, w = frame_bgr.shape[:2]
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    if radius <= 0:
        return _clip01(cv2.resize(alpha_low, (w, h), interpolation=cv2.INTER_LINEAR))
    scale = min(1.0, grid_long_side / max(h, w))
    gw, gh = max(2, round(w * scale)), max(2, round(h * scale))
    guide = cv2.resize(gray, (gw, gh), interpolation=cv2.INTER_AREA).astype(np.float32)
    guide *= 1.0 / 255.0
    p = cv2.resize(alpha_low, (gw, gh), interpolation=cv2.INTER_LINEAR)
    r = max(1, round(radius * scale))
    ksize = (2 * r + 1, 2 * r + 1)
    mean_i = cv2.blur(guide, ksize)
    mean_p = cv2.blur(p, ksize)
    cov_ip = cv2.blur(guide * p, ksize) - mean_i * mean_p
    var_i = cv2.blur(guide * guide, ksize) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    a = cv2.blur(a, ksize) * (1.0 / 255.0)  # fold the guide's /255 into a: q = a*gray + b
    b = cv2.blur(b, ksize)
    a_full = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    b_full = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    q = cv2.multiply(a_full, gray, dtype=cv2.CV_32F)
    cv2.add(q, b_full, dst=q)
    return _clip01(q)


def _clip01(x: np.ndarray) -> np.ndarray:
    np.clip(x, 0.0, 1.0, out=x)
    return x


class TemporalFilter:
    """Per-pixel smoothing of successive alphas at the model's resolution."""

    def __init__(self, settings: MatteSettings):
        self.settings = settings
        self.state: np.ndarray | None = None

    def reset(self) -> None:
        self.state = None

    def apply(self, alpha: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.smoothing == "off" or self.state is None or self.state.shape != alpha.shape:
            self.state = alpha.copy()
            return self.state
        prev = self.state
        if s.smoothing == "ema":
            weight: np.ndarray | float = s.ema
        else:
            weight = self._adaptive_weight(alpha, prev)
        # prev + w * (new - prev): one fused expression, in place on a fresh array
        out = alpha - prev
        out *= weight
        out += prev
        self.state = out
        return out

    def _adaptive_weight(self, new: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """Weight of the new mask: min_weight where it agrees, 1 where it clearly moved.

        The change is measured relative to [change_lo, change_hi] and mapped
        through a ramp; an uncertain new value (near 0.5) scales the change
        down so it has to persist before it is believed.
        """
        s = self.settings
        change = cv2.absdiff(new, prev)
        certainty = np.abs(new - 0.5)
        certainty *= 2.0  # 0 at 0.5, 1 at 0 or 1
        change *= 0.5 + 0.5 * certainty
        lo, hi = s.adaptive_change_lo, max(s.adaptive_change_hi, s.adaptive_change_lo + 1e-3)
        ramp = (change - lo) * (1.0 / (hi - lo))
        np.clip(ramp, 0.0, 1.0, out=ramp)
        return s.adaptive_min_weight + (1.0 - s.adaptive_min_weight) * ramp


class Matte:
    """Low-res alpha + full-res frame → full-res alpha, smoothed over time."""

    def __init__(self, settings: MatteSettings | None = None):
        self.settings = settings or MatteSettings()
        self.temporal = TemporalFilter(self.settings)

    def update(self, settings: MatteSettings) -> None:
        """New parameters from the next frame on; history is kept so nothing jumps."""
        self.settings = settings
        self.temporal.settings = settings

    def reset(self) -> None:
        """Forget history: the next frame's mask is taken as is."""
        self.temporal.reset()

    def apply(self, alpha_lowres: np.ndarray, frame_bgr: np.ndarray) -> np.ndarray:
        """Float32 alpha in [0, 1] at the frame's size."""
        if alpha_lowres.ndim != 2:
            raise ValueError(f"alpha must be a 2-D array, got shape {alpha_lowres.shape}")
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError("frame must be uint8 HxWx3 BGR, got "
                             f"{frame_bgr.dtype} {frame_bgr.shape}")
        alpha = np.asarray(alpha_lowres, dtype=np.float32)
        smoothed = self.temporal.apply(alpha)
        s = self.settings
        return guided_upsample(smoothed, frame_bgr, s.feather, s.feather_eps, s.guide_size)
