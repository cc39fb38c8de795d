"""The embedded default engine: MediaPipe selfie segmentation on LiteRT.

Two tiny models (256x256 square, 144x256 landscape, ~250 KB each) that run in
about 2 ms on two CPU cores. The frame is stretched to the model's input (as
MediaPipe does), so the alpha maps back onto the frame by a plain resize.
It is stateless across frames: temporal behaviour belongs to the matte stage.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from live.checkpoints import selfie_model_path
from live.config import EngineSettings
from live.frames import Pyramid
from live.segment import Prompt, PromptError


def pick_variant(setting: str, width: int, height: int) -> str:
    """Landscape for frames wider than 4:3, square otherwise (portrait, 1:1, 4:3)."""
    if setting != "auto":
        return setting
    return "landscape" if width / height > 1.4 else "square"


class SelfieSegmenter:
    name = "selfie"

    def __init__(self, settings: EngineSettings | None = None, num_threads: int | None = None):
        self.settings = settings or EngineSettings()
        self.num_threads = num_threads or min(2, os.cpu_count() or 1)
        self._interpreters: dict[str, Any] = {}
        self.last_variant: str | None = None

    def _interpreter(self, variant: str) -> Any:
        if variant not in self._interpreters:
            from ai_edge_litert.interpreter import Interpreter

            interp = Interpreter(model_path=str(selfie_model_path(variant)),
                                 num_threads=self.num_threads)
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]
            out = interp.get_output_details()[0]
            self._interpreters[variant] = (interp, inp["index"], out["index"],
                                           tuple(int(v) for v in inp["shape"][1:3]))
        return self._interpreters[variant]

    def load(self, width: int = 1280, height: int = 720) -> None:
        """Fetch and open the model now rather than on the first frame."""
        self._interpreter(pick_variant(self.settings.selfie_model, width, height))

    def step(self, frame_bgr: np.ndarray, pyramid: Pyramid | None = None) -> np.ndarray:
        h, w = frame_bgr.shape[:2]
        variant = pick_variant(self.settings.selfie_model, w, h)
        interp, in_idx, out_idx, (mh, mw) = self._interpreter(variant)
        self.last_variant = variant
        small = (pyramid or Pyramid(frame_bgr)).shrunk(mw, mh)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        tensor = (rgb.astype(np.float32) * (1.0 / 255.0))[None]
        interp.set_tensor(in_idx, tensor)
        interp.invoke()
        alpha = interp.get_tensor(out_idx)[0, :, :, 0]
        return np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False)

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def check_prompt(self, prompt: Prompt) -> None:
        self.add_prompt(prompt)

    def add_prompt(self, prompt: Prompt) -> None:
        raise PromptError("the selfie engine segments every person and takes no clicks; "
                          "switch to the sam2 engine to pick one subject")

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.last_variant}
