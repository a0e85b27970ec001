"""Logging for every ``ooblex`` command: human-readable lines, or one JSON object per line.

``OOBLEX_LOG_FORMAT=json`` (or ``configure(fmt="json")``) makes each record
``{"level", "logger", "msg", ..., "ts"}`` with a logged ``extra={...}`` as fields of its own and a
traceback as ``exc``: what log shippers (Loki, Elasticsearch, Cloud Logging) parse without rules.
Records go to stderr; uvicorn's and the frameworks' loggers propagate here (the CLI hands uvicorn
``log_config=None``).
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "OOBLEX_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Chatty libraries, heard only with ``-v``: per-request and per-ICE-check lines.
CHATTY = ("httpx", "aioice", "aiortc")


def configure(verbose: bool = False, fmt: str | None = None) -> None:
    """Replace the root logger's handlers with one to stderr in ``fmt`` (default ``$OOBLEX_LOG_FORMAT`` or text)."""
    fmt = (fmt or os.environ.get(ENV) or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{ENV} must be one of {', '.join(FORMATS)}; got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT))
    logging.captureWarnings(fmt == "json")  # a warning printed as is would be the one line that is not JSON
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="ts",
                         rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "exc"})
