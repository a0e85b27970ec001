"""The media gateway: WebRTC (WHIP/WHEP), MJPEG, HTTP and WebSocket in front of an ``Engine``."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
