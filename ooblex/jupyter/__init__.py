"""Jupyter integration: ``ob.live`` (live webcam widget). Needs the ``jupyter`` extra (anywidget, ipywidgets).

Attributes are imported on first use, so the Jupyter server extension can use ``ooblex.jupyter.channel``
(the side channel's framing and discovery) without importing the widget.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"live": ".registry", "close_all": ".registry", "live_widgets": ".registry", "LiveWidget": ".widget",
            "Recording": ".recording", "Shot": ".recording", "quiet_native_logs": ".quiet"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ooblex.jupyter' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
