"""Shared fixtures: small synthetic media that every test can afford to make."""

from __future__ import annotations

from pathlib import Path

import pytest

from .media import write_video


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 48-frame 160x120 MPEG-4 clip."""
    return write_video(tmp_path / "clip.mp4", 48)
