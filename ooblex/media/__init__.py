"""Media I/O at the edges of a run: sources (files, cameras, URLs) and sinks (files, MJPEG, null)."""

from .sinks import MJPEGServerSink, NullSink, Sink, VideoFileSink, open_sink
from .sources import Source, SourceError, open_source

__all__ = ["MJPEGServerSink", "NullSink", "Sink", "Source", "SourceError", "VideoFileSink", "open_sink",
           "open_source"]
