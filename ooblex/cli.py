"""The ``ooblex`` command. Each subcommand is a small function; ``main`` only dispatches."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import __version__


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (values are coerced later by the thread's declared types)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"ooblex: --param expects NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .loader import load_thread
    from .media import SourceError
    from .run import run

    thread = load_thread(args.thread)
    source: Any = int(args.source) if args.source.isdigit() else args.source
    try:
        handle = run(thread, source, args.sink, params=parse_params(args.param), mode=args.mode,
                     max_latency_ms=args.max_latency_ms, progress=not args.quiet)
    except SourceError as exc:
        print(f"ooblex: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(handle.summary(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ooblex", description="Live video services from trained models.")
    parser.add_argument("--version", action="version", version=f"ooblex {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="process a file, camera or URL with a tensor thread, in this process")
    p.add_argument("thread", help="built-in name, module:attr or path/to/file.py:attr")
    p.add_argument("--source", required=True, help="video file, image/folder, webcam index, rtsp:// or http:// MJPEG")
    p.add_argument("--sink", default="null", help="output video file, mjpeg://HOST:PORT, or null (stats only)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="thread parameter")
    p.add_argument("--mode", choices=["live", "every"], help="default: every for files, live for cameras/URLs")
    p.add_argument("--max-latency-ms", type=float, default=500.0, help="staleness budget for live streams")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"ooblex: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
