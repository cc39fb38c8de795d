"""The DAVIS sequences of the evaluation data, read one way for benchmarks and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class DavisClip:
    #: BGR and contiguous, as a camera delivers them; decoded by PIL, as SAM 2's own
    #: video loader decodes the same JPEGs (another libjpeg build may round differently)
    frames: list[np.ndarray] = field(default_factory=list)
    #: the ground-truth person masks, bool
    masks: list[np.ndarray] = field(default_factory=list)
    #: the JPEG each frame came from
    paths: list[Path] = field(default_factory=list)

    def link_jpegs(self, folder: Path) -> Path:
        """The frames as ``folder``/00000.jpg, 00001.jpg, ... (symlinks): the only input
        SAM 2's official video predictor reads."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(self.paths):
            (folder / f"{i:05d}.jpg").symlink_to(path.resolve())
        return folder


def load_davis(seq: Path, n: int | None = None, *, pingpong: bool = False) -> DavisClip:
    """The first ``n`` frames (all by default) of a ``davis-*`` folder, with their masks.

    ``pingpong``: play the sequence forth and back until there are ``n`` frames
    (a repeated frame is the same array). Raises FileNotFoundError when the
    folder has no frames or a frame has no mask.
    """
    from PIL import Image

    names = sorted(p.name for p in (seq / "frames").glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no frames/*.jpg in {seq}")
    order = names + names[-2:0:-1] if pingpong else names
    count = len(order) if n is None else n if pingpong else min(n, len(order))
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    clip = DavisClip()
    for i in range(count):
        name = order[i % len(order)]
        frame_path = seq / "frames" / name
        if name not in decoded:
            mask_path = seq / "masks" / name.replace(".jpg", ".png")
            if not mask_path.is_file():
                raise FileNotFoundError(f"{frame_path} has no mask {mask_path}")
            rgb = np.asarray(Image.open(frame_path).convert("RGB"))
            decoded[name] = (np.ascontiguousarray(rgb[..., ::-1]),
                             np.asarray(Image.open(mask_path).convert("L")) > 127)
        frame, mask = decoded[name]
        clip.frames.append(frame)
        clip.masks.append(mask)
        clip.paths.append(frame_path)
    return clip
