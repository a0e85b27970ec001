"""Code blocks of the pages in docs/, for the tests that run the documentation's examples."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def code_blocks(page: str, kind: str = "python") -> list[str]:
    """The ```kind fenced blocks of ``docs/<page>``, in order."""
    return re.findall(rf"```{kind}\n(.*?)```", (DOCS / page).read_text(), re.S)
