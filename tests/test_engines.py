"""Engine choice and model files: what `--engine auto` picks, and clear errors when a model is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from live import checkpoints
from live.checkpoints import ModelMissingError, fetch_sam2, require_sam2_checkpoint
from live.config import EngineSettings
from live.segment import create_segmenter, resolve_engine_name


def test_auto_picks_selfie_without_gpu_or_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))
    assert resolve_engine_name(EngineSettings(name="auto")) == "selfie"
    fake = tmp_path / "sam2.1_hiera_tiny.pt"
    fake.write_bytes(b"0")
    import torch

    # a checkpoint alone is not enough: SAM 2 on a CPU would not be live (no GPU can be
    # lent to these tests, so its presence is what is switched)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine_name(EngineSettings(name="auto")) == "selfie"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine_name(EngineSettings(name="auto")) == "sam2"
    fake.unlink()  # a GPU without a checkpoint: selfie
    assert resolve_engine_name(EngineSettings(name="auto")) == "selfie"
    assert resolve_engine_name(EngineSettings(name="sam2")) == "sam2"


def test_selfie_engine_is_created_by_name() -> None:
    engine = create_segmenter(EngineSettings(name="selfie"))
    assert engine.name == "selfie"


def test_missing_sam2_checkpoint_names_the_fetch_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(ModelMissingError, match="live fetch sam2 --model small"):
        require_sam2_checkpoint(EngineSettings(name="sam2", sam2_model="small"))
    with pytest.raises(ModelMissingError, match="live fetch sam2"):
        create_segmenter(EngineSettings(name="sam2", sam2_model="tiny"))
    partial = tmp_path / "sam2.1_hiera_tiny.pt"
    partial.write_bytes(b"x" * 1000)
    with pytest.raises(ModelMissingError, match="partial download"):
        require_sam2_checkpoint(EngineSettings(name="sam2"))
    with pytest.raises(ModelMissingError, match="not found"):
        require_sam2_checkpoint(EngineSettings(name="sam2", checkpoint=str(tmp_path / "x.pt")))


def test_failed_sam2_download_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIVE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(checkpoints, "SAM2_BASE_URL", "http://127.0.0.1:9/")  # refused at once
    with pytest.raises(ModelMissingError, match="could not download .*--checkpoint PATH"):
        fetch_sam2("tiny", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
