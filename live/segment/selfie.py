"""The embedded default engine: MediaPipe selfie segmentation on LiteRT.

Two tiny models (256x256 square, 144x256 landscape, ~250 KB each) that run in
about 1.2 ms (landscape) and 2.1 ms (square) on one CPU core, as
``model_shapes.prepared`` rewrites them. They were made for a person filling
a selfie frame; on a whole 16:9 frame at 256x144 a person a third of the
frame tall is ~50 model pixels, and the model loses limbs, or the person.
So the engine looks where the people are: it tracks them (``PersonTracks``),
runs the model on a crop around them at its full input size (the square model
for a person, at a narrower input where they stand still enough and fit it
whole, ``model_shapes``; the landscape one for a wide group) and pastes the
result into an alpha of the frame's aspect (``output_grid``).
The whole frame is searched again every ``selfie_refresh_frames`` frames (put
off while nothing moves outside the crop), when the people run into a side of
the crop, and when nobody is tracked, so people coming in are found. Measured
on DAVIS (``python -m bench.quality``): the model's own mask gains 6.5 IoU
points on the mean, 10 on a man running across the frame. A crop is cut from
a level of the frame's shared ``Pyramid`` and resized, so it costs the model's
input size, not the frame's.

The tracks also guard against dropouts (see ``live.segment.tracks``). Smoothing
over time still belongs to the matte stage.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, NamedTuple

import cv2
import numpy as np

from live.checkpoints import selfie_model_path
from live.config import EngineSettings
from live.frames import I420, Pyramid
from live.io import worker
from live.segment import Prompt, PromptError
from live.segment.model_shapes import prepared
from live.segment.tracks import Box, PersonTracks
from live.subjects import THRESHOLD

GRID = 256  # long side of the returned alpha, in cells (2x the model's: crops are finer)
# Context around the tracked people, as a share of their box's long side, and how many
# frames of their latest motion the crop allows for. The crop is planned from the last
# frame's mask, so one frame of motion is where they are now; anyone who still runs into
# the crop's side gets a whole-frame pass on the next frame (``_touches_edge``). One frame
# instead of two showed the model a larger person: on DAVIS the mean IoU went 0.705 ->
# 0.718 and boundary F 0.715 -> 0.728, no sequence worse. A margin of 0.1 scored higher
# still there (0.727 / 0.738) but left out more of what people hold (a magician's staff,
# a juggled ball) on the webcam clips (2026-11-30, python -m bench.quality).
CROP_MARGIN = 0.2
MOTION_FRAMES = 1.0
MIN_CROP = 0.35  # a crop is at least this share of the frame's height (context, and no
#                  blown-up specks)
MIN_GAIN = 1.3  # crop only when it shows the model the people this much larger
# The whole-frame refresh is put off while the picture outside the crop stands still: a
# cell "moved" when its luminance (0-1) changed by more than STILL_CELL since the last
# whole pass (sensor noise and compression stay under it), and the picture "stood still"
# while at most MOVED_CELLS of the grid's cells moved (a person walking in at the edge of
# a 720p frame moves several times that); never more than REFRESH_PUT_OFF intervals long.
STILL_CELL = 0.06
MOVED_CELLS = 0.002
REFRESH_PUT_OFF = 3
MODEL_SIZE = {"square": (256, 256), "landscape": (256, 144)}  # (w, h) of the model files
NARROW_WIDTHS = (160,)  # the square model's narrower inputs (model_shapes), 256 high
# The narrow inputs serve people moving less than this share of their height a frame:
# a runner or a dancer swings limbs into the room a square crop has beside them (on
# DAVIS, narrow crops for them cost parkour 2 IoU points as a browser's frames;
# standing, walking and juggling people move 0.5-3 %, the runner and the dancer 4 %).
NARROW_MOTION = 0.03


def pick_variant(setting: str, width: float, height: float) -> str:
    """Landscape for frames (or crops) wider than 4:3, square otherwise (portrait, 1:1, 4:3)."""
    if setting != "auto":
        return setting
    return "landscape" if width / height > 1.4 else "square"


def model_input(variant: str, aspect: float, narrow: bool = True) -> tuple[int, int]:
    """The model input (w, h) for a crop of this width / height: the model file's own,
    or for the square model (if ``narrow``) the narrowest input that holds so narrow a
    crop whole. The person is seen at the same scale; only background beside them is
    left out."""
    mw, mh = MODEL_SIZE[variant]
    if variant == "square" and narrow:
        for width in NARROW_WIDTHS:
            if aspect <= width / mh:
                return width, mh
    return mw, mh


def output_grid(width: int, height: int) -> tuple[int, int]:
    """The size of the alpha the engine returns: the frame's aspect, ``GRID`` cells on
    the long side (never finer than the frame)."""
    scale = min(1.0, GRID / max(width, height))
    return max(2, round(width * scale)), max(2, round(height * scale))


def plan_crop(box: Box, grid: tuple[int, int], setting: str, motion: float
              ) -> tuple[Box, str, tuple[int, int]] | None:
    """Where to run the model next: ``box`` (grid cells) grown by a margin and a motion
    allowance, widened to the chosen model input's aspect and kept inside the grid;
    with that model's variant and input size (w, h). None where a crop would show
    the model little more than the whole frame does (people spread over the frame,
    or filling it)."""
    gw, gh = grid
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    m = CROP_MARGIN * side + motion
    cw = max(x1 - x0 + 2 * m, MIN_CROP * gh)
    ch = max(y1 - y0 + 2 * m, MIN_CROP * gh)
    variant = pick_variant(setting, cw, ch)
    mw, mh = model_input(variant, cw / ch, narrow=motion <= NARROW_MOTION * (y1 - y0))
    aspect = mw / mh
    if cw / ch < aspect:
        cw = ch * aspect
    else:
        ch = cw / aspect
    cw, ch = min(cw, gw), min(ch, gh)
    fw, fh = MODEL_SIZE[pick_variant(setting, gw, gh)]
    # model pixels per cell in the crop over the same in the whole frame
    if min(mw / cw, mh / ch) / min(fw / gw, fh / gh) < MIN_GAIN:
        return None
    cx = min(max((x0 + x1) / 2, cw / 2), gw - cw / 2)
    cy = min(max((y0 + y1) / 2, ch / 2), gh - ch / 2)
    crop = (int(np.floor(cx - cw / 2)), int(np.floor(cy - ch / 2)),
            int(np.ceil(cx + cw / 2)), int(np.ceil(cy + ch / 2)))
    crop = (max(0, crop[0]), max(0, crop[1]), min(gw, crop[2]), min(gh, crop[3]))
    return crop, variant, (mw, mh)


class Loaded(NamedTuple):
    """One selfie model opened in LiteRT, ready to invoke."""

    interpreter: Any
    input_index: int
    output_index: int
    key: tuple[str, int, tuple[int, int]]  # (model file, threads, input w x h)


class InterpreterPool:
    """LiteRT interpreters of the selfie models, lent to one segmenter at a time and
    kept for the next when it is dropped.

    Every WebRTC session builds its own segmenter. Building and freeing its two
    interpreters (square and landscape: crops use both) each session left ~3 MB
    of native memory per session in the server, which no Python object held and
    malloc_trim did not return (tests/test_server_churn.py, 50 peers, same run:
    RSS +146 to +159 MiB; +16 to +29 MiB with the interpreters reused; 150
    peers +51 MiB). An interpreter holds no state between invokes, so a
    finished session's is as good as new: the pool keeps at most as many per
    model as were ever in use at once (the admitted sessions), and a process
    loads each model once per session slot, not once per session.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[str, int, tuple[int, int]], list[Loaded]] = {}
        self._lock = threading.Lock()

    def take(self, variant: str, num_threads: int, size: tuple[int, int]) -> Loaded:
        """An interpreter of the model ``variant`` taking ``size`` (w, h) pictures
        (the model file's own, or a narrower one), as ``prepared`` rewrites it."""
        path = selfie_model_path(variant)
        key = (str(path), num_threads, size)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_content=prepared(path, *size), num_threads=num_threads)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        return Loaded(interp, inp["index"], out["index"], key)

    def give_back(self, loaded: dict[tuple[str, tuple[int, int]], Loaded]) -> None:
        """Return a dropped segmenter's interpreters (by variant and input size) for the
        next one."""
        with self._lock:
            for entry in loaded.values():
                self._free.setdefault(entry.key, []).append(entry)
        loaded.clear()


INTERPRETERS = InterpreterPool()


class SelfieSegmenter:
    name = "selfie"

    def __init__(self, settings: EngineSettings | None = None, num_threads: int | None = None):
        self.settings = settings or EngineSettings()
        self.num_threads = num_threads or worker.FRAME_THREADS or min(2, os.cpu_count() or 1)
        self._interpreters: dict[tuple[str, tuple[int, int]], Loaded] = {}
        # back to the pool on close(), or when this segmenter is dropped (an engine swap)
        self._release = weakref.finalize(self, INTERPRETERS.give_back, self._interpreters)
        self.last_variant: str | None = None
        self.tracks = PersonTracks()
        self._grid: tuple[int, int] | None = None
        self._since_full = 0
        self._full_next = True  # the next frame needs a whole-frame pass
        self._gray_at_full: np.ndarray | None = None  # the picture at the last whole pass
        self._center: tuple[float, float] | None = None  # centre of the tracked people
        self._motion = 0.0  # how far (cells) that centre moved per frame, smoothed
        self.crops = 0  # frames segmented from a crop (figures for stats)

    def _interpreter(self, variant: str, size: tuple[int, int] | None = None) -> Loaded:
        key = (variant, size or MODEL_SIZE[variant])
        if key not in self._interpreters:
            self._interpreters[key] = INTERPRETERS.take(variant, self.num_threads, key[1])
        return self._interpreters[key]

    def load(self, width: int = 1280, height: int = 720) -> None:
        """Fetch and open the model now rather than on the first frame."""
        self._interpreter(pick_variant(self.settings.selfie_model, width, height))

    def _run(self, loaded: Loaded, image_bgr: np.ndarray) -> np.ndarray:
        """The model's alpha for an image already at its input size (a view of the
        interpreter's output: use it before the next invoke)."""
        interp, in_idx, out_idx = loaded[:3]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        # straight into the input tensor, scaled to [0, 1]: one pass, no copies
        np.multiply(rgb, np.float32(1.0 / 255.0), out=interp.tensor(in_idx)()[0],
                    casting="unsafe")
        interp.invoke()
        return interp.tensor(out_idx)()[0, :, :, 0]

    def _whole(self, pyramid: Pyramid, grid: tuple[int, int]) -> np.ndarray:
        """The model on the whole frame (stretched to its input, as MediaPipe does)."""
        w, h = pyramid.size
        variant = pick_variant(self.settings.selfie_model, w, h)
        loaded = self._interpreter(variant)
        mw, mh = MODEL_SIZE[variant]
        self.last_variant = variant
        alpha = self._run(loaded, pyramid.shrunk(mw, mh))
        return cv2.resize(alpha, grid, interpolation=cv2.INTER_LINEAR)

    def _cropped(self, pyramid: Pyramid, grid: tuple[int, int], crop: Box,
                 variant: str, size: tuple[int, int]) -> np.ndarray:
        """The model on ``crop`` (grid cells) at its full input size, at the crop's grid size.

        The crop is cut from the smallest pyramid level still at least as fine as
        the model's input (its halvings are shared with the matte and the blur),
        on whole pixels of that level, and resized to the model's input: a plain
        resize costs a quarter of an affine warp's 0.4 ms. The model's alpha is
        mapped back onto the crop's cells by the exact inverse of that cut, so the
        pixels a level holds beyond the cells are accounted for, not smeared.
        """
        w, h = pyramid.size
        loaded = self._interpreter(variant, size)
        mw, mh = size
        x0, y0, x1, y1 = crop
        fx, fy = w / grid[0], h / grid[1]  # frame pixels per cell
        k = 0
        while 2 ** (k + 1) <= min((x1 - x0) * fx / mw, (y1 - y0) * fy / mh):
            k += 1
        level = pyramid.halved(k)
        lh, lw = level.shape[:2]
        ux, uy = lw / grid[0], lh / grid[1]  # level pixels per cell
        lx0, ly0 = int(np.floor(x0 * ux)), int(np.floor(y0 * uy))
        lx1, ly1 = min(lw, int(np.ceil(x1 * ux))), min(lh, int(np.ceil(y1 * uy)))
        image = cv2.resize(level[ly0:ly1, lx0:lx1], (mw, mh), interpolation=cv2.INTER_LINEAR)
        alpha = self._run(loaded, image)
        # cell centre c -> level coordinate (c + 0.5) * u - 0.5 -> model pixel
        sx, sy = (lx1 - lx0) / mw, (ly1 - ly0) / mh  # level pixels per model pixel
        back = np.float32([[ux / sx, 0, ((x0 + 0.5) * ux - lx0) / sx - 0.5],
                           [0, uy / sy, ((y0 + 0.5) * uy - ly0) / sy - 0.5]])
        return cv2.warpAffine(alpha, back, (x1 - x0, y1 - y0),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def step(self, frame: np.ndarray | I420 | Pyramid) -> np.ndarray:
        """Alpha on the engine's output grid (``output_grid``), float32 in [0, 1]."""
        pyramid = Pyramid.of(frame)
        w, h = pyramid.size
        grid = output_grid(w, h)
        if grid != self._grid:
            self.reset()
            self._grid = grid
        s = self.settings
        box = self.tracks.union() if s.selfie_crop else None
        plan = plan_crop(box, grid, s.selfie_model, self._motion) if box else None
        gray = pyramid.gray(*grid) * (1.0 / 255.0)
        whole = None
        if plan is None or self._full_next or self._refresh_due(gray, plan[0]):
            whole = self._whole(pyramid, grid)
            self._since_full = 0
            self._full_next = False
            self._gray_at_full = gray
        else:
            self._since_full += 1
        if plan is None:
            alpha = whole
        else:
            crop, variant, size = plan
            x0, y0, x1, y1 = crop
            alpha = np.zeros(grid[::-1], np.float32) if whole is None else whole
            inside = self._cropped(pyramid, grid, crop, variant, size)
            alpha[y0:y1, x0:x1] = inside
            self.crops += 1
            self._full_next = _touches_edge(inside, crop, grid)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        if s.selfie_hold_frames > 0:
            suspects = self.tracks.suspects(alpha, gray)
            if suspects:  # a second look before holding: the other kind of pass
                again = self._whole(pyramid, grid) if plan is not None else None
                for t in suspects:
                    x0, y0, x1, y1 = t.region(alpha.shape)
                    if again is None:
                        whole_frame = pick_variant(s.selfie_model, w, h)
                        crop, variant, size = plan_crop(t.box, grid, s.selfie_model, 0.0) or (
                            (0, 0, grid[0], grid[1]), whole_frame, MODEL_SIZE[whole_frame])
                        cx0, cy0, cx1, cy1 = crop
                        part = self._cropped(pyramid, grid, crop, variant, size)
                        np.maximum(alpha[cy0:cy1, cx0:cx1], part, out=alpha[cy0:cy1, cx0:cx1])
                    else:
                        np.maximum(alpha[y0:y1, x0:x1], again[y0:y1, x0:x1],
                                   out=alpha[y0:y1, x0:x1])
                self._full_next = True
        alpha = self.tracks.update(alpha, gray, s.selfie_hold_frames,
                                   crop=plan[0] if plan is not None else None)
        if self.tracks.pending:  # someone new outside the crop: look there again
            self._full_next = True
        self._follow(self.tracks.union())
        return alpha

    def _refresh_due(self, gray: np.ndarray, crop: Box) -> bool:
        """Is it time for the whole-frame pass that finds people coming in?

        Every ``selfie_refresh_frames`` frames, unless the picture outside the crop
        has not changed since the last whole pass: nobody can have come in there
        unseen, and the pass (1-2 ms, on top of the crop's) is put off, at most
        ``REFRESH_PUT_OFF`` times over. A still camera with one person in the crop
        then pays for the crop alone; a moving camera or anyone moving outside
        the crop gets the refresh on time."""
        s = self.settings
        if self._since_full + 1 < s.selfie_refresh_frames:
            return False
        last = self._gray_at_full
        if last is None or self._since_full + 1 >= REFRESH_PUT_OFF * s.selfie_refresh_frames:
            return True
        changed = cv2.absdiff(gray, last) > STILL_CELL
        x0, y0, x1, y1 = crop
        changed[y0:y1, x0:x1] = False
        return np.count_nonzero(changed) > MOVED_CELLS * changed.size

    def _follow(self, box: Box | None) -> None:
        """Track how fast the people move, for the next crop's motion allowance."""
        if box is None:
            self._center, self._motion = None, 0.0
            return
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        if self._center is not None:
            step = max(abs(center[0] - self._center[0]), abs(center[1] - self._center[1]))
            self._motion = max(step * MOTION_FRAMES, 0.7 * self._motion)
        self._center = center

    def reset(self) -> None:
        """Forget the tracked people: the next frame is searched whole."""
        self.tracks.reset()
        self._grid = None
        self._since_full = 0
        self._full_next = True
        self._gray_at_full = None
        self._center, self._motion = None, 0.0

    def close(self) -> None:
        """Lend the interpreters to the next session now (a closed pipeline may sit in
        a reference cycle until the garbage collector runs)."""
        self._release()

    def check_prompt(self, prompt: Prompt) -> None:
        self.add_prompt(prompt)

    def add_prompt(self, prompt: Prompt) -> None:
        raise PromptError("the selfie engine segments every person and takes no clicks; "
                          "switch to the sam2 engine to pick one subject")

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.last_variant,
                "people": len(self.tracks.tracks), "threads": self.num_threads}


def _touches_edge(alpha: np.ndarray, crop: Box, grid: tuple[int, int]) -> bool:
    """Does the person run into a side of the crop that is not the frame's edge?
    Then part of them is outside it: the next frame looks at the whole frame."""
    x0, y0, x1, y1 = crop
    sides = []
    if x0 > 0:
        sides.append(alpha[:, 0])
    if x1 < grid[0]:
        sides.append(alpha[:, -1])
    if y0 > 0:
        sides.append(alpha[0, :])
    if y1 < grid[1]:
        sides.append(alpha[-1, :])
    return any(float(side.max()) > THRESHOLD for side in sides)
