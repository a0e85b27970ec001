"""The examples in docs/models.md run as written."""

from __future__ import annotations

import os
from pathlib import Path

from .docs import code_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_models_examples_run(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    blocks = code_blocks("models.md")
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/models.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "1 [145, 112, 149, 149]" in printed and "\n1 1\n" in printed
    assert "3 (120, 160, 3)" in printed and "(480, 640, 3) True" in printed
