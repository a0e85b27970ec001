"""Shared fixtures: small synthetic media that every test can afford to make."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .media import write_video

# Helper modules (netns, gateway_server) are also imported by plain name in some tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 48-frame 160x120 MPEG-4 clip."""
    return write_video(tmp_path / "clip.mp4", 48)
