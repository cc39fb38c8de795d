"""Streaming SAM 2: the official video predictor's outputs with a memory bank of constant size.

Meta's ``SAM2VideoPredictor`` loads a whole video up front and keeps one output
per tracked frame forever (~0.77 MiB per frame and object at 1024 px). A live
camera never ends, so this module drives the same ``SAM2Base.track_step`` one
frame at a time and mirrors the predictor's bookkeeping step by step
(``add_new_points_or_box`` / ``add_new_mask`` -> ``propagate_in_video_preflight``
-> ``propagate_in_video``), then deletes every memory that no future frame can
select. The per-frame logits are therefore bit-identical to the official
predictor's (tests/test_sam2_stream.py checks max |diff| == 0.0), while the
state stops growing once the memory windows are full.

What a future frame ``f`` can read (see ``SAM2Base._prepare_memory_conditioned_features``):

- spatial memories of the ``num_maskmem - 1`` frames before ``f`` (stride aware),
- object pointers of the ``max_obj_ptrs_in_encoder - 1`` frames before ``f``,
- the ``max_cond_frames_in_attn`` conditioning (prompted) frames closest to ``f``;
  a conditioning frame that falls out of that set is still read through the
  two windows above while it is recent enough,
- one memory positional encoding, identical for every frame (kept once).

Prompts follow the official semantics. ``add_prompt`` applies to the next frame
fed, which is then an initial conditioning frame for that object (as clicking
an untracked frame in the official predictor). ``correct`` applies to the frame
just fed: on an object already tracked there it is a correction click (fed
with the previous logits of that frame), exactly like clicking a tracked frame
before propagating again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from live.config import SettingsError, check_engine_setting
from live.frames import I420, Pyramid, check_bgr
from live.segment import Prompt, PromptError, gpu_device
from live.segment.pil_resize import resize_like_pil

if TYPE_CHECKING:
    from live.segment.sam2_batch import SAM2Batcher

log = logging.getLogger(__name__)

# ``track_step`` takes the video length. It only serves two checks: pointers at
# ``t >= num_frames`` are skipped, and the pointer window is
# ``min(num_frames, max_obj_ptrs_in_encoder)``. A stream has no length, and its
# frame index grows past any small constant, so the constant must exceed every
# index we will ever use: then both checks behave as in the official predictor
# on any video at least ``max_obj_ptrs_in_encoder`` (16) frames long.
NUM_FRAMES = 1 << 62

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE: "object absent" logits


def pick_device(name: str = "auto") -> torch.device:
    return torch.device(name if name != "auto" else gpu_device() or "cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: without them bf16 autocast on the CPU is emulated and ~7x slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch or no oneDNN
        return False


def pick_precision(device: torch.device, precision: str = "auto") -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise SettingsError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"  # MPS, and CPUs without native bf16


def default_image_size(device: torch.device) -> int:
    if device.type == "cpu":
        log.warning("SAM 2 on the CPU runs at 512 px by default to stay usable; the "
                    "checkpoints were trained at 1024 px, so masks are coarser "
                    "(set engine.image_size=1024 to trade speed for quality)")
        return 512
    return 1024


def model_image_size(image_size: int | None, device: torch.device) -> int:
    """``engine.image_size`` when set (checked), else the device's default."""
    if image_size is None:
        return default_image_size(device)
    return check_engine_setting("image_size", image_size)


def build_model(config: str, checkpoint: str | Path | None, image_size: int,
                device: torch.device) -> torch.nn.Module:
    """The official video predictor (postprocessing settings included), never ``init_state``-ed.

    ``checkpoint=None`` leaves the weights random: only tests and benchmarks
    want that, real use goes through ``live.checkpoints.require_sam2_checkpoint``.
    """
    from sam2.build_sam import build_sam2_video_predictor

    check_engine_setting("image_size", image_size)
    return build_sam2_video_predictor(
        config, ckpt_path=str(checkpoint) if checkpoint else None, device=str(device),
        hydra_overrides_extra=[f"++model.image_size={image_size}"])


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable through dicts/lists/tuples.

    Views share a storage, so each storage is counted once (the official
    predictor's expanded positional encodings would otherwise count N times).
    """
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def _locked(method):
    """The pipeline steps frames in a worker thread while clicks arrive from the event loop."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


def _has_hole_filling_kernel() -> bool:
    try:
        from sam2 import _C  # noqa: F401  (CUDA extension, absent in CPU-only installs)
        return True
    except Exception:
        return False


@dataclass
class _ObjectBank:
    """One object's memories, in the same layout as the official ``output_dict``."""

    cond: dict[int, dict[str, Any]] = field(default_factory=dict)
    non_cond: dict[int, dict[str, Any]] = field(default_factory=dict)
    # outputs of prompts on the current frame whose memory is not encoded yet
    temp_cond: dict[int, dict[str, Any]] = field(default_factory=dict)
    temp_non_cond: dict[int, dict[str, Any]] = field(default_factory=dict)
    points: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # current frame only
    tracked: set[int] = field(default_factory=set)  # current frame only
    cond_dropped: int = 0  # conditioning frames freed (the official predictor still has them)
    pred_masks: torch.Tensor | None = None  # this frame's low-res logits (hole-filled)
    object_score: float = NO_OBJ_SCORE

    def find_output(self, key: str, t: int) -> dict[str, Any] | None:
        """Latest output on frame t: pending prompt first, then stored (official lookup order)."""
        temp = self.temp_cond if key == "cond" else self.temp_non_cond
        for store in (temp, self.cond, self.non_cond):
            if t in store:
                return store[t]
        return None


@dataclass(frozen=True)
class ResizedFrame:
    """A frame as the model takes it: resized to SxS exactly as the official loader does.

    What a session sends to a SAM 2 replica on a cluster (live.serve.sam2_serve)
    instead of the whole frame: ``rgb`` is SxSx3 uint8 (192 KiB at 256 px, vs
    2.6 MiB for a 720p frame), ``video_hw`` the frame's size, in whose pixels
    prompts come.
    """

    rgb: np.ndarray
    video_hw: tuple[int, int]


def resize_frame(frame_bgr: np.ndarray, size: int) -> ResizedFrame:
    """The official JPEG loader's resize: PIL bicubic on uint8, to size x size RGB.

    (``cv2.resize`` would be faster but is not bicubic-as-PIL: other numbers.)
    """
    bgr = np.ascontiguousarray(frame_bgr)
    h, w = bgr.shape[:2]
    # PIL unpacks BGR itself: no flipped copy of the frame (~1-2 ms saved)
    img = Image.frombuffer("RGB", (w, h), bgr, "raw", "BGR", 0, 1)
    return ResizedFrame(np.asarray(img.resize((size, size), Image.BICUBIC)), (h, w))


def alpha_from_logits(preds: list[torch.Tensor], size: int) -> np.ndarray:
    """The union of the objects' low-res logits (max), bilinear to size x size, sigmoid."""
    if not preds:
        return np.zeros((size, size), np.float32)
    union = torch.cat(preds, dim=0).amax(dim=0, keepdim=True)
    high = F.interpolate(union.float(), size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(high)[0, 0].float().cpu().numpy()


@dataclass(frozen=True)
class _Features:
    frame_idx: int
    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]



@contextlib.contextmanager
def inference(device_type: str, precision: str) -> Iterator[None]:
    """No autograd, and bf16 autocast when that is the precision: every SAM 2 call
    (a session's step, a batch of encoder passes, a Serve replica's) runs in it."""
    with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
        yield

class StreamingSAM2:
    """SAM 2 on an endless stream: one backbone pass per frame, one memory bank per object."""

    name = "sam2"
    #: times the memory bank was lost: never here; a stream on a cluster's replica
    #: (live.serve.sam2_serve) loses it with the replica, and its engine re-anchors
    restarts = 0

    def __init__(self, model: torch.nn.Module, *, max_cond_frames: int = 4,
                 precision: str = "auto", compile_encoder: bool = False,
                 resize_on_device: bool | None = None, batcher: "SAM2Batcher | None" = None):
        """``batcher``: the model's front shared with other sessions, which runs their
        stateless steps as batches (live.segment.sam2_batch); the memory bank stays here."""
        # select_closest_cond_frames asserts >= 2 once there are more cond frames than this
        check_engine_setting("max_cond_frames", max_cond_frames)
        self.model = model.eval()
        # The official code reads the cap from the model; set it there so both agree.
        self.model.max_cond_frames_in_attn = int(max_cond_frames)
        self.device = next(model.parameters()).device
        self.precision = pick_precision(self.device, precision)
        if batcher is not None and (batcher.model is not model
                                    or batcher.precision != self.precision):
            raise ValueError("a batcher serves the sessions of its own model and precision")
        self.batcher = batcher
        self.image_size = int(model.image_size)
        self._fill_holes = model.fill_hole_area > 0 and _has_hole_filling_kernel()
        # PIL is faster on the CPU; on a GPU the exact integer port saves ~9 ms of CPU a frame
        self.resize_on_device = (self.device.type == "cuda" if resize_on_device is None
                                 else resize_on_device)
        # The official loader maps each uint8 value v to
        # (float32(v / 255.0 in float64) - mean) / std (float32 ops on the device). Doing those very ops once per value gives a 3x256 table
        # that reproduces it bit for bit at a fraction of the cost (the float64 pass was ~4 ms).
        mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=self.device)[:, None]
        std = torch.tensor(IMG_STD, dtype=torch.float32, device=self.device)[:, None]
        unit = (torch.arange(256, dtype=torch.float64) / 255.0).float().to(self.device)[None, :]
        self._lut = ((unit - mean) / std).reshape(-1)
        self._lut_np = self._lut.cpu().numpy().reshape(3, 256)  # torch's CPU gather is slow
        self._lut_offsets = (torch.arange(3, device=self.device) * 256)[:, None, None]
        if compile_encoder and not getattr(model, "_live_compiled", False):
            if self.device.type == "cuda":
                model._live_compiled = True  # a shared model is compiled once
                model.image_encoder.forward = torch.compile(model.image_encoder.forward,
                                                            mode="max-autotune", dynamic=False)
            else:
                log.warning("torch.compile of the SAM 2 encoder is only used on CUDA; ignored")
        self._pos_enc: list[torch.Tensor] | None = None  # THE shared memory positional encoding
        self._lock = threading.RLock()
        self.reset()
        if batcher is not None:
            batcher.register(self)

    @classmethod
    def build(cls, config: str, checkpoint: str | Path | None, *, image_size: int | None = None,
              device: str = "auto", max_cond_frames: int = 4, precision: str = "auto",
              compile_encoder: bool = False, shared: bool = False) -> "StreamingSAM2":
        """``shared``: take the process's one model for these settings (loaded on first
        use) and batch its stateless steps with the other sessions on it."""
        if shared:
            from live.segment.sam2_batch import shared_batcher

            batcher = shared_batcher(config, checkpoint, image_size=image_size, device=device,
                                     max_cond_frames=max_cond_frames, precision=precision,
                                     compile_encoder=compile_encoder)
            return cls(batcher.model, max_cond_frames=max_cond_frames,
                       precision=batcher.precision, compile_encoder=compile_encoder,
                       batcher=batcher)
        dev = pick_device(device)
        model = build_model(config, checkpoint, model_image_size(image_size, dev), dev)
        return cls(model, max_cond_frames=max_cond_frames,
                   precision=precision, compile_encoder=compile_encoder)

    # ------------------------------------------------------------------ public API

    @_locked
    def reset(self) -> None:
        self._banks: dict[int, _ObjectBank] = {}
        self._pending: list[Prompt] = []
        self._frame_idx = -1
        self._video_hw: tuple[int, int] | None = None
        self._frame_bgr: np.ndarray | None = None
        self._features: _Features | None = None
        self._given_backbone: dict[str, Any] | None = None
        self._refresh_stats()

    @property
    def frame_idx(self) -> int:
        """Index of the frame fed last (-1 before the first)."""
        return self._frame_idx

    @property
    def obj_ids(self) -> list[int]:
        return list(self._banks)

    def validate(self, prompt: Prompt) -> None:
        """Raise PromptError for a prompt this stream cannot take (checked on the last frame)."""
        check_prompt_fits(prompt, *(self._video_hw or (None, None)))

    @_locked
    def add_prompt(self, prompt: Prompt) -> None:
        """Queue a prompt for the next frame fed; that frame becomes a conditioning frame."""
        self.validate(prompt)
        self._pending.append(prompt)

    @_locked
    def correct(self, prompt: Prompt) -> tuple[list[int], torch.Tensor]:
        """Apply a prompt to the frame just fed; returns every object's logits at video size.

        Mirrors ``add_new_points_or_box`` / ``add_new_mask`` on an already
        propagated frame: a correction for a tracked object, a first
        conditioning frame for a new one. Several calls with
        ``clear_old_points=False`` accumulate clicks like the official demo.
        """
        if self._frame_bgr is None:
            raise PromptError("no frame yet: a correction applies to the last frame fed")
        check_prompt_fits(prompt, *self._video_hw)
        with self._inference():
            is_cond = self._apply(prompt, self._frame_idx)
            masks = self._consolidated_video_res(self._frame_idx, is_cond)
        self._refresh_stats()
        return self.obj_ids, masks

    @_locked
    def remove_object(self, obj_id: int) -> None:
        if obj_id not in self._banks:
            raise PromptError(f"unknown object id {obj_id}; tracked objects: {self.obj_ids}")
        del self._banks[obj_id]
        self._refresh_stats()

    @_locked
    def track(self, frame_bgr: np.ndarray) -> tuple[list[int], torch.Tensor]:
        """Feed one frame; per-object logits at the frame's size, like ``video_res_masks``."""
        preds = self._advance(frame_bgr)
        if not preds:
            h, w = frame_bgr.shape[:2]
            return [], torch.empty(0, 1, h, w, device=self.device)
        return self.obj_ids, self._to_video_res(torch.cat(preds, dim=0))

    @_locked
    def step(self, frame: np.ndarray | I420 | Pyramid) -> np.ndarray:
        """Alpha (union of all objects) at image_size x image_size, float32 in [0, 1].

        The input is the whole BGR frame, resized exactly as the official
        predictor does (PIL, from the full frame) to match it bit for bit.

        The union is taken on the low-res logits (max over objects), upsampled
        bilinearly to image_size as the official high-res masks are, then put
        through a sigmoid: one interpolation whatever the object count, and soft
        edges the matte stage can feather.
        """
        preds = self._advance(Pyramid.of(frame).image)
        with self._inference():
            return alpha_from_logits(preds, self.image_size)

    @_locked
    def feed(self, frame: ResizedFrame, backbone_out: dict[str, Any] | None) -> None:
        """Step one frame whose image-encoder output was computed elsewhere (a batch of
        several sessions' frames on a Serve replica); read the results with
        ``low_res_logits`` and ``object_scores``. ``backbone_out`` may be None when
        ``needs_features`` said no: the frame then has nothing to track."""
        self._advance(frame, backbone_out)

    def needs_features(self) -> bool:
        """Whether the next frame goes through the image encoder (it has objects or prompts)."""
        return bool(self._banks or self._pending)

    def close(self) -> None:
        """The model may be shared: only leave its batcher (the others stop waiting for us)."""
        if self.batcher is not None:
            self.batcher.unregister(self)

    @_locked
    def object_scores(self) -> dict[int, float]:
        """Object-presence logit per object on the last frame (<= 0: SAM 2 says absent)."""
        return {obj_id: bank.object_score for obj_id, bank in self._banks.items()}

    @_locked
    def low_res_logits(self) -> dict[int, torch.Tensor]:
        """Each object's logits on the last frame, at the decoder's resolution (S/4)."""
        return {obj_id: bank.pred_masks for obj_id, bank in self._banks.items()
                if bank.pred_masks is not None}

    @_locked
    def state_bytes(self) -> dict[str, Any]:
        """Bytes held across frames: per object, the one shared encoding, and the total."""
        seen: set[int] = set()
        shared = tensor_bytes(self._pos_enc, seen)
        per_obj = {}
        for obj_id, bank in self._banks.items():
            per_obj[obj_id] = tensor_bytes(
                [bank.cond, bank.non_cond, bank.temp_cond, bank.temp_non_cond, bank.points,
                 bank.pred_masks], seen)
        return {"objects": per_obj, "shared": shared, "total": shared + sum(per_obj.values())}

    def stats(self) -> dict[str, Any]:
        """Figures as of the last frame or prompt; never waits for a frame in progress."""
        return dict(self._stats)

    def _refresh_stats(self) -> None:
        sizes = self.state_bytes()
        self._stats = {
            "engine": self.name, "device": str(self.device), "precision": self.precision,
            "image_size": self.image_size, "frames": self._frame_idx + 1, "objects": self.obj_ids,
            "memory_bank_bytes": sizes["total"], "memory_bank_bytes_per_object": sizes["objects"],
            "cond_frames": {k: sorted(b.cond) for k, b in self._banks.items()}}
        if self.batcher is not None:  # the model is shared: with how many, how well batched
            self._stats["shared_model"] = self.batcher.stats()

    # ------------------------------------------------------------------ frames

    def preprocess(self, frame: np.ndarray | ResizedFrame) -> torch.Tensor:
        """Exactly the official JPEG loader: PIL bicubic on uint8, /255 in float64, mean/std."""
        if isinstance(frame, ResizedFrame) or not self.resize_on_device:
            small = frame if isinstance(frame, ResizedFrame) else resize_frame(frame,
                                                                                self.image_size)
            if small.rgb.shape != (self.image_size, self.image_size, 3):
                raise ValueError(f"a resized frame must be {self.image_size}x{self.image_size}"
                                 f"x3, got {small.rgb.shape}")
            planes = [self._lut_np[c][small.rgb[..., c]] for c in range(3)]
            return torch.from_numpy(np.stack(planes)).to(self.device).unsqueeze(0)
        bgr = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
        u8 = resize_like_pil(bgr.flip(-1), self.image_size)
        idx = u8.permute(2, 0, 1).long() + self._lut_offsets
        return self._lut[idx].unsqueeze(0)

    def _current_features(self) -> _Features:
        """Backbone features of the current frame, computed at most once per frame."""
        if self._features is None or self._features.frame_idx != self._frame_idx:
            backbone_out = self._given_backbone  # computed elsewhere (``feed``)
            if backbone_out is None:
                image = self.preprocess(self._frame_bgr)
                if self.batcher is not None:
                    backbone_out = self.batcher.encode(image)
                else:
                    backbone_out = self.model.forward_image(image)
            _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
            self._features = _Features(self._frame_idx, feats, pos, sizes)
        return self._features

    def _advance(self, frame_bgr: np.ndarray | ResizedFrame,
                 backbone_out: dict[str, Any] | None = None) -> list[torch.Tensor]:
        if not isinstance(frame_bgr, ResizedFrame):
            check_bgr(frame_bgr)
        self._given_backbone = backbone_out
        with self._inference():
            for bank in self._banks.values():  # corrections on the previous frame -> memory
                self._finalize(bank)
            self._frame_idx += 1
            t = self._frame_idx
            self._frame_bgr = frame_bgr
            self._video_hw = (frame_bgr.video_hw if isinstance(frame_bgr, ResizedFrame)
                              else frame_bgr.shape[:2])
            pending, self._pending = self._pending, []
            for prompt in pending:
                try:  # prompts queued before any frame could not be checked against its size
                    check_prompt_fits(prompt, *self._video_hw)
                except PromptError as exc:
                    log.warning("dropped a prompt for object %s: %s", prompt.obj_id, exc)
                    continue
                self._apply(prompt, t)
            preds = []
            for bank in self._banks.values():
                self._finalize(bank)
                bank.points = {k: v for k, v in bank.points.items() if k == t}
                if t in bank.cond:
                    out = bank.cond[t]
                else:
                    out = self._infer(bank, t, is_init_cond_frame=False, point_inputs=None,
                                      mask_inputs=None, run_mem_encoder=True)
                    bank.non_cond[t] = out
                bank.tracked = {t}
                bank.pred_masks = out["pred_masks"]
                bank.object_score = float(out["object_score_logits"].max())
                preds.append(out["pred_masks"])
                self._prune(bank, current=t)
        self._refresh_stats()
        return preds

    # ------------------------------------------------------------------ official mirror

    def _infer(self, bank: _ObjectBank, t: int, *, is_init_cond_frame: bool,
               point_inputs: dict[str, torch.Tensor] | None, mask_inputs: torch.Tensor | None,
               run_mem_encoder: bool, prev_sam_mask_logits: torch.Tensor | None = None
               ) -> dict[str, Any]:
        """``SAM2VideoPredictor._run_single_frame_inference`` for one object."""
        f = self._current_features()
        out = self.model.track_step(
            frame_idx=t, is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=f.vision_feats, current_vision_pos_embeds=f.vision_pos,
            feat_sizes=f.feat_sizes, point_inputs=point_inputs, mask_inputs=mask_inputs,
            output_dict={"cond_frame_outputs": self._cond_view(bank, t),
                         "non_cond_frame_outputs": bank.non_cond},
            num_frames=NUM_FRAMES, track_in_reverse=False,
            run_mem_encoder=run_mem_encoder, prev_sam_mask_logits=prev_sam_mask_logits)
        maskmem = out["maskmem_features"]
        if maskmem is not None:
            maskmem = maskmem.to(torch.bfloat16)
        pred_masks = out["pred_masks"]
        if self._fill_holes:
            from sam2.utils.misc import fill_holes_in_mask_scores

            pred_masks = fill_holes_in_mask_scores(pred_masks, self.model.fill_hole_area)
        return {"maskmem_features": maskmem, "maskmem_pos_enc": self._shared_pos(
                    out["maskmem_pos_enc"]),
                "pred_masks": pred_masks, "obj_ptr": out["obj_ptr"],
                "object_score_logits": out["object_score_logits"]}

    def _cond_view(self, bank: _ObjectBank, t: int) -> dict[int, dict[str, Any]]:
        """The conditioning frames in the order the official predictor would attend to them.

        Once frames were freed the official predictor holds more of them than
        the cap, so ``select_closest_cond_frames`` reorders them (closest
        first); we hold only the selected ones, which it would return in
        insertion order. The order of memory tokens changes float sums, so
        reproduce it here.
        """
        cap = self.model.max_cond_frames_in_attn
        if not bank.cond_dropped or cap <= 0 or len(bank.cond) > cap:
            return bank.cond
        before = max((k for k in bank.cond if k < t), default=None)
        after = min((k for k in bank.cond if k >= t), default=None)
        order = [k for k in (before, after) if k is not None]
        order += sorted((k for k in bank.cond if k not in order), key=lambda k: abs(k - t))
        return {k: bank.cond[k] for k in order}

    def _shared_pos(self, pos_enc: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The memory positional encoding is the same for every frame: keep the first one."""
        if pos_enc is None:
            return None
        if self._pos_enc is None:
            self._pos_enc = [x[0:1].clone() for x in pos_enc]
        return self._pos_enc

    def _apply(self, prompt: Prompt, t: int) -> bool:
        """``add_new_points_or_box`` / ``add_new_mask`` on frame t; True if it is a cond frame."""
        bank = self._banks.setdefault(prompt.obj_id, _ObjectBank())
        is_init_cond_frame = t not in bank.tracked
        is_cond = is_init_cond_frame or self.model.add_all_frames_to_correct_as_cond
        key = "cond" if is_cond else "non_cond"
        h, w = self._video_hw
        if prompt.mask is not None:
            mask_inputs = self._mask_input(prompt.mask)
            bank.points.pop(t, None)
            out = self._infer(bank, t, is_init_cond_frame=is_init_cond_frame, point_inputs=None,
                              mask_inputs=mask_inputs, run_mem_encoder=False)
        else:
            points, labels = self._point_input(prompt, w, h)
            old = None if prompt.clear_old_points else bank.points.get(t)
            from sam2.utils.misc import concat_points

            point_inputs = concat_points(old, points, labels)
            bank.points[t] = point_inputs
            prev = bank.find_output(key, t)
            prev_logits = None
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = torch.clamp(prev["pred_masks"].to(self.device), -32.0, 32.0)
            out = self._infer(bank, t, is_init_cond_frame=is_init_cond_frame,
                              point_inputs=point_inputs, mask_inputs=None, run_mem_encoder=False,
                              prev_sam_mask_logits=prev_logits)
        (bank.temp_cond if is_cond else bank.temp_non_cond)[t] = out
        bank.pred_masks = out["pred_masks"]
        bank.object_score = float(out["object_score_logits"].max())
        return is_cond

    def _point_input(self, prompt: Prompt, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        pts = [(float(x), float(y)) for x, y, _ in prompt.points]
        labels = [int(lab) for _, _, lab in prompt.points]
        points = torch.tensor(pts, dtype=torch.float32).reshape(1, -1, 2)
        labels_t = torch.tensor(labels, dtype=torch.int32).reshape(1, -1)
        if prompt.box is not None:  # the box goes first, as labels 2 and 3
            box = torch.tensor(prompt.box, dtype=torch.float32).reshape(1, 2, 2)
            points = torch.cat([box, points], dim=1)
            labels_t = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels_t], dim=1)
        points = points / torch.tensor([w, h]).to(points.device)
        points = points * self.image_size
        return points.to(self.device), labels_t.to(self.device)

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        m = np.asarray(mask)
        m = m > 0.5 if m.dtype.kind == "f" else m.astype(bool)
        mask_t = torch.from_numpy(m)[None, None].float().to(self.device)
        size = self.image_size
        if mask_t.shape[-2:] != (size, size):
            mask_t = F.interpolate(mask_t, size=(size, size), align_corners=False,
                                   mode="bilinear", antialias=True)
            mask_t = (mask_t >= 0.5).float()
        return mask_t

    def _finalize(self, bank: _ObjectBank) -> None:
        """``propagate_in_video_preflight``: encode prompted frames' memories, then file them."""
        for is_cond in (False, True):
            temp = bank.temp_cond if is_cond else bank.temp_non_cond
            dest = bank.cond if is_cond else bank.non_cond
            for t, out in temp.items():
                if out["maskmem_features"] is None:
                    f = self._current_features()
                    assert f.frame_idx == t, "prompts only ever touch the current frame"
                    size = self.image_size
                    high = F.interpolate(out["pred_masks"].to(self.device), size=(size, size),
                                         mode="bilinear", align_corners=False)
                    maskmem, pos = self.model._encode_new_memory(
                        current_vision_feats=f.vision_feats, feat_sizes=f.feat_sizes,
                        pred_masks_high_res=high,
                        object_score_logits=out["object_score_logits"], is_mask_from_pts=True)
                    out["maskmem_features"] = maskmem.to(torch.bfloat16)
                    out["maskmem_pos_enc"] = self._shared_pos(pos)
                dest[t] = out
            temp.clear()
        for t in bank.cond:
            bank.non_cond.pop(t, None)

    # ------------------------------------------------------------------ bounded memory

    def _spatial_indices(self, f: int) -> list[int]:
        """Frames whose spatial memory frame ``f`` reads (the official stride-aware formula)."""
        nm, r = self.model.num_maskmem, self.model.memory_temporal_stride_for_eval
        out = []
        for t_pos in range(1, nm):
            t_rel = nm - t_pos
            if t_rel == 1:
                out.append(f - 1)
            else:
                out.append(((f - 2) // r) * r - (t_rel - 2) * r)
        return out

    def _prune(self, bank: _ObjectBank, current: int) -> None:
        """Delete what no frame >= current can read; strip the logits of past frames.

        The current frame counts: a correction click on it runs ``track_step``
        on it again, reading its own memory windows.
        """
        model = self.model
        nm, r = model.num_maskmem, model.memory_temporal_stride_for_eval
        spatial: set[int] = set()
        # beyond this horizon every index a frame reads is newer than anything stored now
        for f in range(current, current + r * nm + 2):
            spatial.update(self._spatial_indices(f))
        if model.use_obj_ptrs_in_encoder:
            ptr_window = min(NUM_FRAMES, model.max_obj_ptrs_in_encoder) - 1
            ptr_lo = current - ptr_window
        else:
            ptr_lo = current
        cap = model.max_cond_frames_in_attn
        selectable = set(sorted(bank.cond)[-cap:]) if cap > 0 else set(bank.cond)
        for store, keep_whole in ((bank.cond, selectable), (bank.non_cond, set())):
            for t in list(store):
                out = store[t]
                if t in keep_whole or t in spatial:
                    pass
                elif t >= ptr_lo:  # only its object pointer can still be read
                    if out["maskmem_features"] is not None:
                        store[t] = out = dict(out, maskmem_features=None)
                else:
                    del store[t]
                    bank.cond_dropped += store is bank.cond
                    continue
                if t != current and out["pred_masks"] is not None:
                    store[t] = dict(out, pred_masks=None)  # logits only serve corrections

    # ------------------------------------------------------------------ outputs

    def _to_video_res(self, masks: torch.Tensor) -> torch.Tensor:
        """``_get_orig_video_res_output``: bilinear to the frame size (+ optional non-overlap)."""
        h, w = self._video_hw
        masks = masks.to(self.device)
        if masks.shape[-2:] != (h, w):
            masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
        if self.model.non_overlap_masks:
            masks = self.model._apply_non_overlapping_constraints(masks)
        return masks

    def _consolidated_video_res(self, t: int, is_cond: bool) -> torch.Tensor:
        """``_consolidate_temp_output_across_obj(..., consolidate_at_video_res=True)``."""
        h, w = self._video_hw
        key = "cond" if is_cond else "non_cond"
        out_masks = torch.full((len(self._banks), 1, h, w), NO_OBJ_SCORE, dtype=torch.float32,
                               device=self.device)
        for i, bank in enumerate(self._banks.values()):
            out = bank.find_output(key, t)
            if out is None or out["pred_masks"] is None:
                continue
            obj_mask = out["pred_masks"]
            if obj_mask.shape[-2:] != (h, w):
                obj_mask = F.interpolate(obj_mask, size=(h, w), mode="bilinear",
                                         align_corners=False)
            out_masks[i:i + 1] = obj_mask
        return self._to_video_res(out_masks)

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.batcher is not None:  # take turns on the shared model, batch with the others
                stack.enter_context(self.batcher.serving(self))
            stack.enter_context(inference(self.device.type, self.precision))
            yield



def check_prompt_fits(prompt: Prompt, h: int | None, w: int | None) -> None:
    """Reject what the model would silently misread: clicks off the frame, bad labels."""
    if not isinstance(prompt.obj_id, (int, np.integer)) or isinstance(prompt.obj_id, bool):
        raise PromptError(f"obj_id must be an integer, got {prompt.obj_id!r}")
    if prompt.mask is None and not prompt.points and prompt.box is None:
        raise PromptError("a prompt needs points, a box or a mask")
    if prompt.mask is not None and (prompt.points or prompt.box is not None):
        raise PromptError("give either a mask or points/box in one prompt, not both")
    if prompt.box is not None and not prompt.clear_old_points:
        raise PromptError("a box must come first: use clear_old_points=True with a box")
    for x, y, label in prompt.points:
        if label not in (0, 1):
            raise PromptError(f"point label must be 1 (object) or 0 (background), got {label}")
        if w is not None and not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"point ({x}, {y}) is outside the {w}x{h} frame")
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (x0 < x1 and y0 < y1):
            raise PromptError(f"box {prompt.box} must be (x0, y0, x1, y1) with x0<x1, y0<y1")
        if w is not None and not (0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h):
            raise PromptError(f"box {prompt.box} is outside the {w}x{h} frame")
    if prompt.mask is not None:
        m = np.asarray(prompt.mask)
        if m.ndim != 2:
            raise PromptError(f"mask must be HxW, got shape {m.shape}")
        if h is not None and m.shape != (h, w):
            raise PromptError(f"mask is {m.shape[1]}x{m.shape[0]}, the frame is {w}x{h}")
