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


def serve(app: Any, host: str, port: int) -> int:
    import uvicorn

    print(f"ooblex: serving http://{host}:{port}/  (API docs: /docs, OpenAPI: /openapi.json)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=64 << 20)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .gateway import Settings, create_app
    from .gateway.demo import demo_threads

    settings = Settings.from_env(loopback_candidates=not args.no_loopback)
    return serve(create_app(threads=demo_threads(), settings=settings), args.host, args.port)


def cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway import Settings, create_app
    from .loader import load_thread

    settings = Settings.from_env(loopback_candidates=args.loopback or None)
    threads = [load_thread(spec) for spec in args.thread]
    app = create_app(broker=args.broker, threads=threads, settings=settings,
                     embedded_worker=args.broker.startswith("memory"))
    return serve(app, args.host, args.port)


def cmd_send(args: argparse.Namespace) -> int:
    import asyncio

    from .webrtc.client import send

    return asyncio.run(send(args.source, args.to, codec=args.codec, duration=args.duration, fps=args.fps,
                            show_every=args.every))


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8800, help="port (default 8800)")


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

    p = sub.add_parser("demo", help="gateway + embedded engine + demo threads in one process (no services needed)")
    add_server_args(p)
    p.add_argument("--no-loopback", action="store_true", help="do not offer 127.0.0.1 ICE candidates")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("gateway", help="the media gateway alone, in front of workers on a broker")
    add_server_args(p)
    p.add_argument("--broker", required=True, help="redis://HOST:PORT, amqp://... or memory://")
    p.add_argument("--thread", action="append", default=[], metavar="SPEC",
                   help="a thread the workers serve (name shown in listings); repeatable")
    p.add_argument("--loopback", action="store_true", help="offer 127.0.0.1 ICE candidates")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("send", help="send video to a gateway over WHIP; prints fps and round-trip latency")
    p.add_argument("--source", required=True, help="webcam index, video file, rtsp:// or http:// MJPEG URL")
    p.add_argument("--to", required=True, help="WHIP URL, e.g. http://127.0.0.1:8800/whip/identity?k=3")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    p.add_argument("--fps", type=float, default=30.0, help="sending rate for files (default 30)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until the end)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between printed reports")
    p.set_defaults(func=cmd_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # per-request and per-ICE-check chatter only with -v
        for name in ("httpx", "aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)
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
