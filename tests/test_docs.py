"""The examples in docs/sdk.md run as written."""

from __future__ import annotations

from .docs import code_blocks


def test_sdk_examples_run(capsys) -> None:
    blocks = code_blocks("sdk.md")
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/sdk.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "must be within [0, 255]" in printed and "batch_size must be" in printed
    assert "5 [0.0, 0.0, 0.0, 1.0, 1.0]" in printed
    assert "['video', 'audio'] aac" in printed  # the soundtrack kept
