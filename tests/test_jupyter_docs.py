"""The examples in docs/jupyter.md run as written (with a video file where a notebook would use the webcam)."""

from __future__ import annotations

import re

import pytest

from .docs import code_blocks
from .media import write_video

pytest.importorskip("anywidget")


def test_jupyter_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.mp4", 30)
    blocks = code_blocks("jupyter.md")
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/jupyter.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "{'levels': 8, 'gray': False}"
    assert re.match(r"<Recording (\d+) frames over 1s, done> \1 \[None\]", printed[1]), printed[1]
    assert int(printed[1].split()[1]) >= 15
    assert printed[2] == "(120, 160, 3) True"
    assert printed[3] == "2 True True"  # compare mode: one Shot per thread, the overlay's caption
    assert namespace["live"].closed and namespace["both"].closed
    assert (tmp_path / "processed.mp4").stat().st_size > 0
