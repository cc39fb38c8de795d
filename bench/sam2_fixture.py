"""SAM 2.1 with seeded random weights, for the tests and benchmarks.

No checkpoint can be downloaded where they run, and what they check does not
depend on what the weights learned: streaming against the official predictor
(the same weights on both sides), the auto-prompter's plumbing, the cost.
"""

from __future__ import annotations

from typing import Any


def random_sam2(image_size: int, device: Any = "cpu", model: str = "tiny") -> Any:
    """The official video predictor (``build_model``), seed 0, never ``init_state``-ed."""
    import torch

    from live.checkpoints import sam2_config_name
    from live.segment.sam2_stream import build_model

    torch.manual_seed(0)
    return build_model(sam2_config_name(model), None, image_size, torch.device(device))
