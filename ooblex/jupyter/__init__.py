"""Jupyter integration: ``ob.live`` (live webcam widget). Needs the ``jupyter`` extra (anywidget, ipywidgets)."""

from .live import close_all, live, live_widgets
from .session import Recording, Shot
from .widget import LiveWidget

__all__ = ["LiveWidget", "Recording", "Shot", "close_all", "live", "live_widgets"]
