"""The engine: per-stream scheduling (``stream``), user-code execution (``runner``), serving (``worker``)."""

from .engine import Engine, UnknownThread
from .stream import Stream, StreamClosed
from .worker import Worker

__all__ = ["Engine", "Stream", "StreamClosed", "UnknownThread", "Worker"]
