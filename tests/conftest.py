"""Shared fixtures: where the evaluation data lives, and real frames from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import DATA

@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$LIVE_DATA_DIR`` or ``../shared/data`` (bench.DATA); tests needing real video
    skip without it."""
    root = DATA
    if not root.is_dir():
        pytest.skip(f"evaluation data not found at {root} (set LIVE_DATA_DIR to the shared/data "
                    "folder that holds davis-*/ and clips/)")
    return root


@pytest.fixture(scope="session")
def clip_path(data_dir: Path) -> Path:
    """A 1280x720 webcam-like clip of a man in a plain room."""
    path = data_dir / "clips" / "06_pingpong.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the evaluation data")
    return path
