"""SAM 2 with no click needed: the selfie model anchors it and re-anchors it when it drifts.

SAM 2 tracks whatever it was prompted with, but a virtual-background user
should not have to click anything. So, in "auto" mode, the embedded selfie
model (2 ms a frame) proposes the person: its mask on the first frame that
shows someone becomes SAM 2's mask prompt for object 1. SAM 2 then tracks, and
the selfie model keeps watching; SAM 2 is re-anchored from the selfie mask on
the next frame when

- its object score says the object is gone (score <= 0), or
- the two masks disagree (IoU < ``reanchor_iou``) for ``reanchor_frames``
  frames in a row.

A re-anchor waits until the selfie model sees a person (a blank frame has no
mask to give). Each re-anchor is a new conditioning frame, so the
conditioning-frame cap of the stream keeps memory bounded.

A user prompt (a click, a box or a mask) switches to "user" mode: the auto
object is dropped, SAM 2 follows exactly what was clicked, and re-anchoring
stays off until ``reset()``.

On a cluster the stream's memory bank lives on a SAM 2 replica
(live.serve.sam2_serve). If that replica goes away the stream says so
(``restarts`` grows): the session goes back to auto mode and is re-anchored
from the selfie mask on its next frame, which stands in for the lost one.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from live.checkpoints import require_sam2_checkpoint, sam2_config_name
from live.config import EngineSettings
from live.frames import I420, Pyramid
from live.segment import Prompt
from live.segment.sam2_stream import StreamingSAM2
from live.segment.selfie import SelfieSegmenter

AUTO_OBJ_ID = 1
# a selfie mask covering less of the frame than this is noise, not a person to anchor on
MIN_PERSON_FRACTION = 0.02


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


class AutoPromptedSAM2:
    """The ``sam2`` engine: a StreamingSAM2 kept on the person by the selfie model."""

    name = "sam2"

    def __init__(self, settings: EngineSettings, *, stream: StreamingSAM2 | None = None,
                 selfie: SelfieSegmenter | None = None):
        self.settings = settings
        if stream is None:
            checkpoint = require_sam2_checkpoint(settings)  # ModelMissingError names the fix
            stream = StreamingSAM2.build(
                sam2_config_name(settings.sam2_model), checkpoint,
                image_size=settings.image_size, device=settings.device,
                max_cond_frames=settings.max_cond_frames, compile_encoder=settings.compile,
                shared=True)  # one model per process; its sessions' heavy steps batched
        self.stream = stream
        self.selfie = selfie or SelfieSegmenter(settings)
        self.reset()

    @classmethod
    def with_random_weights(cls, settings: EngineSettings, seed: int = 0,
                            precision: str = "auto") -> "AutoPromptedSAM2":
        """For tests and benchmarks only: the real model needs a checkpoint."""
        import torch

        torch.manual_seed(seed)
        stream = StreamingSAM2.build(
            sam2_config_name(settings.sam2_model), None, image_size=settings.image_size,
            device=settings.device, max_cond_frames=settings.max_cond_frames,
            precision=precision)
        return cls(settings, stream=stream)

    # ------------------------------------------------------------------ Segmenter

    def reset(self) -> None:
        """Forget everything, including a user's clicks: back to auto mode."""
        self.stream.reset()
        self.mode = "auto"
        self.need_anchor = True
        self.anchor_reason = "start"
        self.anchors: dict[str, int] = {"start": 0, "lost": 0, "disagreement": 0}
        self.anchored_frames: list[int] = []  # stream frame indices that got a selfie prompt
        self.disagree_streak = 0
        self.last_iou: float | None = None
        self.last_object_score: float | None = None
        self.last_person_fraction: float | None = None
        self.restarts_seen = self.stream.restarts

    def check_prompt(self, prompt: Prompt) -> None:
        self.stream.validate(prompt)

    def add_prompt(self, prompt: Prompt) -> None:
        """A user prompt: drop the auto object, follow the prompt from the next frame on."""
        self.stream.validate(prompt)  # a bad click must not wipe the current tracking
        if self.mode == "auto":
            self.stream.reset()
            self.mode = "user"
            self.need_anchor = False
        self.stream.add_prompt(prompt)

    def step(self, frame: np.ndarray | I420 | Pyramid) -> np.ndarray:
        pyramid = Pyramid.of(frame)
        if self.mode == "user":
            alpha = self.stream.step(pyramid)
            if self.stream.restarts == self.restarts_seen:
                return alpha
            return self._stream_lost(alpha, self._person_mask(pyramid))
        person = self._person_mask(pyramid)
        self.last_person_fraction = float(person.mean())
        if self.need_anchor and self.last_person_fraction >= MIN_PERSON_FRACTION:
            w, h = pyramid.size
            full = cv2.resize(person.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            self.stream.add_prompt(Prompt(obj_id=AUTO_OBJ_ID, mask=full.astype(bool)))
            self.anchors[self.anchor_reason] += 1
            self.anchored_frames.append(self.stream.frame_idx + 1)
            self.disagree_streak = 0
        alpha = self.stream.step(pyramid)
        if self.stream.restarts != self.restarts_seen:
            return self._stream_lost(alpha, person)
        if AUTO_OBJ_ID in self.stream.obj_ids:
            self._judge(alpha, person)
        return alpha

    def close(self) -> None:
        self.stream.close()  # the model is shared: only its memory bank goes
        self.selfie.close()  # its interpreters go back to the pool

    def stats(self) -> dict[str, Any]:
        return {**self.stream.stats(), "mode": self.mode, "anchors": dict(self.anchors),
                "reanchors": self.anchors["lost"] + self.anchors["disagreement"],
                "waiting_for_anchor": self.need_anchor, "disagree_streak": self.disagree_streak,
                "last_iou": self.last_iou, "last_object_score": self.last_object_score}

    # ------------------------------------------------------------------ decisions

    def _person_mask(self, pyramid: Pyramid) -> np.ndarray:
        """The selfie model's person mask (bool, at its own resolution)."""
        person = self.selfie.step(pyramid) > 0.5
        if self.settings.subjects == "main":
            person = largest_component(person)
        return person

    def _stream_lost(self, alpha: np.ndarray, person: np.ndarray) -> np.ndarray:
        """Back to auto mode, anchored again on the next frame showing a person (a user's
        clicks went with the memory bank); this frame gets the selfie mask."""
        self.restarts_seen = self.stream.restarts
        self.mode, self.need_anchor, self.anchor_reason = "auto", True, "lost"
        return cv2.resize(person.astype(np.float32), (alpha.shape[1], alpha.shape[0]),
                          interpolation=cv2.INTER_LINEAR)

    def _judge(self, alpha: np.ndarray, person: np.ndarray) -> None:
        """Decide, from this frame, whether the next frame needs a fresh selfie anchor."""
        score = self.stream.object_scores()[AUTO_OBJ_ID]
        # both maps stretch the whole frame onto a square/rectangle: a plain resize aligns them
        sam = cv2.resize(alpha, (person.shape[1], person.shape[0]),
                         interpolation=cv2.INTER_AREA) > 0.5
        iou = mask_iou(sam, person)
        self.last_iou, self.last_object_score = iou, score
        self.disagree_streak = self.disagree_streak + 1 if iou < self.settings.reanchor_iou else 0
        if score <= 0:
            self.need_anchor, self.anchor_reason = True, "lost"
        elif self.disagree_streak >= self.settings.reanchor_frames:
            self.need_anchor, self.anchor_reason = True, "disagreement"
        else:
            self.need_anchor = False
