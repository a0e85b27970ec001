"""The ``ooblex`` command. Each subcommand is a small function; ``main`` only dispatches."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from . import __version__, logs
from .errors import OoblexError

log = logging.getLogger("ooblex.cli")


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


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from .cluster.config import resolve
    from .cluster.node import WorkerNode
    from .loader import load_thread

    config = resolve(args.broker, args.store)
    local = {t.name: t for t in map(load_thread, ["identity", *args.thread])}  # every engine has identity
    node = WorkerNode(config.broker, config.store, threads=list(local.values()), cache=args.cache,
                      drain_s=args.drain_s, retry_s=args.retry_s, retry_max_s=args.retry_max_s)
    server = serve_worker_metrics(node, args.metrics_host, args.metrics_port) if args.metrics_port else None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop)

    try:
        asyncio.run(serve())
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


def serve_worker_metrics(node: Any, host: str, port: int) -> Any:
    """Give ``node`` metrics and serve them on ``host:port`` (a control token needed when it has a secret)."""
    from .metrics import Metrics, serve

    node.metrics = Metrics(node.id)
    server = serve(node.metrics.registry, host, port, node.secret)
    log.info("worker %s: metrics on http://%s:%d/metrics", node.id, host, server.server_port)
    return server


def cmd_deploy(args: argparse.Namespace) -> int:
    from .cluster.deploy import deploy
    from .loader import load_thread

    thread = load_thread(args.thread)
    if args.export:
        path = deploy(thread, requirements=args.requirement, weights=args.weights, license=args.license,
                      export=args.export)
        print(json.dumps({"name": thread.name, "artifact": str(path)}, indent=2))
        return 0
    dep = deploy(thread, args.cluster, store=args.store, requirements=args.requirement, weights=args.weights,
                 keep_versions=args.keep_versions, wait=args.wait, license=args.license)
    print(json.dumps({"name": dep.name, "version": dep.version, "urls": dep.urls}, indent=2))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .cluster.up import up

    return up(workers=args.workers, broker=args.broker, host=args.host, port=args.port, threads=args.thread,
              gateways=args.gateways)


def _add_cluster_args(p: argparse.ArgumentParser, flag: str = "--broker") -> None:
    p.add_argument(flag, default=None, help="redis://host:6379/0 or amqp://user:pw@host/ (default $OOBLEX_BROKER)")
    p.add_argument("--store", default=None, help="Redis for registry and state (default $OOBLEX_STORE, or the "
                   "broker when it is Redis)")

INSECURE_WARNING = (
    "ooblex: WARNING: --insecure: serving on {host} with no OOBLEX_SECRET. Anyone who can reach this address "
    "can start streams on your threads (using your CPU/GPU), watch every stream, change parameters, and run "
    "jobs on files in the media root. Set OOBLEX_SECRET and hand out tokens (ooblex token ...) instead.")


def check_exposure(host: str, settings: Any) -> None:
    """Refuse to listen beyond loopback without a secret unless ``--insecure`` says so (then warn).

    The app itself (``guard.py``) refuses non-loopback clients by the same rule; this check says so at start.
    """
    from .gateway.guard import is_loopback

    if settings.secret or is_loopback(host):
        return
    if not settings.allow_insecure_network:
        raise PermissionError(f"refusing to serve on {host} without OOBLEX_SECRET: anyone on the network could use "
                              "and watch every stream. Set OOBLEX_SECRET (and hand out tokens: ooblex token ...), "
                              "or pass --insecure on a network you trust")
    print(INSECURE_WARNING.format(host=host), file=sys.stderr, flush=True)


def serve(app: Any, host: str, port: int) -> int:
    from .gateway.server import serve as run

    print(f"ooblex: serving http://{host}:{port}/  (API docs: /docs, OpenAPI: /openapi.json)", flush=True)
    # On SIGTERM, open MJPEG and WebSocket responses get a few seconds, then sessions close (peers told).
    run(app, host, port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .gateway import Settings, create_app
    from .gateway.demo import demo_threads

    settings = Settings.from_env(loopback_candidates=not args.no_loopback, host=args.host,
                                 allow_insecure_network=args.insecure or None)
    check_exposure(args.host, settings)
    app = create_app(threads=demo_threads(), settings=settings)
    if settings.secret:
        from .gateway.auth import token_rules
        from .tokens import mint

        token = mint("publish", ttl_s=12 * 3600, secret=settings.secret, rules=token_rules(app))
        print(f"ooblex: demo page with a 12-hour publish token: http://{args.host}:{args.port}/#token={token}",
              flush=True)
    return serve(app, args.host, args.port)


def cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway import Settings, create_app
    from .loader import load_thread

    if not args.broker:
        raise ValueError("ooblex gateway needs a broker: --broker redis://HOST:PORT (or amqp://..., memory://) "
                         "or OOBLEX_BROKER")
    settings = Settings.from_env(loopback_candidates=args.loopback or None, host=args.host,
                                 allow_insecure_network=args.insecure or None)
    check_exposure(args.host, settings)
    threads = [load_thread(spec) for spec in args.thread]
    public = args.public_url or f"http://{args.host}:{args.port}"
    app = create_app(broker=args.broker, threads=threads, settings=settings,
                     embedded_worker=args.broker.startswith("memory"), store=args.store, public_url=public,
                     peer_url=args.peer_url)
    return serve(app, args.host, args.port)


def _token_rules(args: argparse.Namespace, secret: bytes) -> Any:
    """The token rules from the environment, with ``--store``/``--keys``/``--audience`` applied."""
    from dataclasses import replace

    from .token_keys import keys_for
    from .tokens import Rules

    rules = Rules.from_env(secret, store=args.store)
    if args.keys:
        rules = replace(rules, keys=keys_for(secret, args.keys))
    return replace(rules, audience=args.audience) if getattr(args, "audience", None) else rules


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        from .gateway.settings_docs import reference

        print(reference(), end="")
        return 0
    from .gateway import Settings

    print(json.dumps(Settings.from_env().effective(), indent=2))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .secret import require_secret
    from .tokens import mint, parse_ttl

    secret = require_secret()
    if args.scope == "view" and (args.stream is None) == (not args.all_streams):
        raise ValueError("ooblex token view needs --stream ID (one stream) or --all-streams (every stream)")
    stream = "*" if args.all_streams else args.stream
    print(mint(args.scope, thread=args.thread, stream=stream, ttl_s=parse_ttl(args.ttl), subject=args.subject,
               secret=secret, rules=_token_rules(args, secret)))
    return 0


def cmd_token_keys(args: argparse.Namespace) -> int:
    from .secret import require_secret

    secret = require_secret()
    keys = _token_rules(args, secret).keyring(secret)
    if args.action == "rotate":
        ring = keys.update(lambda r: r.rotated(revoke_old=args.revoke_old))
    elif args.action == "revoke":
        ring = keys.update(lambda r: r.revoked(args.kid))
    else:
        ring = keys.ring()
    print(json.dumps({**ring.describe(), "where": keys.where}, indent=2))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import asyncio

    from .webrtc.client import send

    return asyncio.run(send(args.source, args.to, codec=args.codec, duration=args.duration, fps=args.fps,
                            show_every=args.every, token=args.token))


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; another address "
                   "needs OOBLEX_SECRET or --insecure)")
    p.add_argument("--port", type=int, default=8800, help="port (default 8800)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host and clients without "
                   "OOBLEX_SECRET (anyone who reaches it can use and watch every stream)")


def _add_token_commands(p: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", default=None, help="cluster Redis store holding the token keys (default "
                       "$OOBLEX_STORE, or $OOBLEX_BROKER when it is Redis)")
    where.add_argument("--keys", default=None, metavar="FILE", help="file holding the token keys instead "
                       "(default $OOBLEX_TOKEN_KEYS)")
    mint_args = argparse.ArgumentParser(add_help=False, parents=[where])
    mint_args.add_argument("--ttl", default="1h", help="lifetime: 90 (seconds), 30m, 12h, 7d (default 1h; at most "
                           "$OOBLEX_MAX_TOKEN_TTL_S, 1d, or for control $OOBLEX_MAX_TOKEN_TTL_CONTROL_S, 7d)")
    mint_args.add_argument("--subject", default=None, help="whom the token is for (claim sub; per-client limits "
                           "count it; default a new random id)")
    mint_args.add_argument("--audience", default=None, help="the gateways' audience (default "
                           "$OOBLEX_TOKEN_AUDIENCE, or ooblex)")
    sub = p.add_subparsers(dest="scope", metavar="SCOPE|KEYS", required=True)
    q = sub.add_parser("publish", parents=[mint_args], help="start streams on --thread, and watch or tune them")
    q.add_argument("--thread", default="*", help="thread the token is for (default: any)")
    q.set_defaults(func=cmd_token, stream=None, all_streams=False)
    q = sub.add_parser("view", parents=[mint_args], help="watch --stream (or every stream: --all-streams)")
    q.add_argument("--stream", default=None, help="stream id the token is for")
    q.add_argument("--all-streams", action="store_true", help="every stream, instead of one --stream")
    q.set_defaults(func=cmd_token, thread="*")
    q = sub.add_parser("control", parents=[mint_args], help="everything: listings, metrics, jobs, console")
    q.set_defaults(func=cmd_token, thread="*", stream=None, all_streams=False)
    q = sub.add_parser("rotate", parents=[where], help="make a new key sign new tokens (older keys stay valid)")
    q.add_argument("--revoke-old", action="store_true", help="also revoke every older key: all tokens signed "
                   "before now stop working")
    q.set_defaults(func=cmd_token_keys, action="rotate")
    q = sub.add_parser("revoke", parents=[where], help="revoke keys: every token signed with them stops working")
    q.add_argument("kid", nargs="+", help="key id (see: ooblex token keys)")
    q.set_defaults(func=cmd_token_keys, action="revoke")
    q = sub.add_parser("keys", parents=[where], help="list the valid token keys and the current one")
    q.set_defaults(func=cmd_token_keys, action="list")


def metrics_port(text: str) -> int:
    """``--metrics-port``: a TCP port (0: off), else a message that also names its environment variable."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: off; also from $OOBLEX_METRICS_PORT), "
                                         f"got {text!r}")
    return port


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

    p = sub.add_parser("worker", help="serve the cluster's deployed tensor threads (and local ones)")
    _add_cluster_args(p)
    p.add_argument("--thread", action="append", default=[], help="also serve this local thread (repeatable)")
    p.add_argument("--cache", default=None, help="blob/pip cache directory (default ~/.cache/ooblex)")
    p.add_argument("--drain-s", type=float, default=10.0, help="on SIGTERM, time for in-flight work to finish")
    p.add_argument("--retry-s", type=float, default=5.0, help="first wait before retrying a refused deploy "
                   "(doubles each time; a changed manifest is retried at once)")
    p.add_argument("--retry-max-s", type=float, default=300.0, help="longest wait between retries of a refused deploy")
    p.add_argument("--metrics-port", type=metrics_port, default=os.environ.get("OOBLEX_METRICS_PORT", "0"),
                   help="serve Prometheus metrics on this port (default $OOBLEX_METRICS_PORT, else 0: off)")
    p.add_argument("--metrics-host", default=os.environ.get("OOBLEX_METRICS_HOST") or "127.0.0.1",
                   help="address of the metrics port (default $OOBLEX_METRICS_HOST, else 127.0.0.1; another "
                   "address needs OOBLEX_SECRET, and scrapes then a control token)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("deploy", help="publish a tensor thread to a cluster (like ob.deploy)")
    p.add_argument("thread", help="module:attr or path/to/file.py:attr")
    _add_cluster_args(p, "--cluster")
    p.add_argument("--requirement", action="append", default=[], help="pip requirement (repeatable)")
    p.add_argument("--weights", action="append", default=[], help="weight file (repeatable)")
    p.add_argument("--keep-versions", action="store_true", help="keep earlier versions loaded")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a worker to serve it")
    p.add_argument("--license", default="", help="licence of the code and weights (an SPDX id), kept in the manifest")
    p.add_argument("--export", metavar="FILE", default=None, help="write a signed artifact file (to upload in a "
                   "gateway's /console) instead of deploying; needs OOBLEX_SECRET, no cluster")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("up", help="a local cluster: redis (+ rabbitmq), a gateway and N workers; Ctrl-C stops all")
    p.add_argument("--workers", type=int, default=2, help="worker processes to start, each serving every deployed "
                   "thread (default 2; 0: none, e.g. to attach your own)")
    p.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis", help="message broker to start for "
                   "frames: redis, or rabbitmq (needs rabbitmq-server; Redis still holds the registry) (default redis)")
    p.add_argument("--host", default="127.0.0.1", help="gateway address")
    p.add_argument("--port", type=int, default=8800, help="gateway port")
    p.add_argument("--thread", action="append", default=[], help="local thread every worker serves (repeatable)")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes; more than 1 run behind HAProxy on "
                   "--port (needs haproxy)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("demo", help="gateway + embedded engine + demo threads in one process (no services needed)")
    add_server_args(p)
    p.add_argument("--no-loopback", action="store_true", help="do not offer 127.0.0.1 ICE candidates")
    p.set_defaults(func=cmd_demo)

    from .cluster.config import env_broker

    p = sub.add_parser("gateway", help="the media gateway alone, in front of workers on a broker")
    add_server_args(p)
    p.add_argument("--broker", default=env_broker() or None,
                   help="redis://HOST:PORT, amqp://... or memory:// (default $OOBLEX_BROKER)")
    p.add_argument("--thread", action="append", default=[], metavar="SPEC",
                   help="a thread the workers serve (name shown in listings); repeatable")
    p.add_argument("--loopback", action="store_true", help="offer 127.0.0.1 ICE candidates")
    p.add_argument("--store", default=None, help="cluster Redis store (default $OOBLEX_STORE, or the Redis broker)")
    p.add_argument("--public-url", default=None, help="where clients reach this gateway, announced to the cluster "
                   "(default http://HOST:PORT; behind a load balancer, the balancer's URL)")
    p.add_argument("--peer-url", default=None, help="where the cluster's other gateways reach this one (default "
                   "the public URL; behind a load balancer, this process's own address)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("config", help="print the gateway settings in effect here (defaults, then OOBLEX_* "
                       "variables), secrets masked; an unknown OOBLEX_* variable is warned about")
    p.add_argument("--reference", action="store_true", help="print the settings reference (docs/settings.md) instead")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("token", help="mint bearer tokens for gateways, rotate and revoke their keys "
                       "(needs OOBLEX_SECRET)")
    _add_token_commands(p)

    p = sub.add_parser("send", help="send video (and a file's sound) to a gateway over WHIP; prints fps and "
                       "round-trip latency")
    p.add_argument("--source", required=True, help="webcam index, video file, rtsp:// or http:// MJPEG URL")
    p.add_argument("--to", required=True, help="WHIP URL, e.g. http://127.0.0.1:8800/whip/identity?k=3")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="video codec to send (default vp8)")
    p.add_argument("--fps", type=float, default=None,
                   help="sending rate for files (default: the file's own; another rate drops its sound)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until the end)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between printed reports")
    p.add_argument("--token", default=None, help="publish token for the thread (default $OOBLEX_TOKEN)")
    p.set_defaults(func=cmd_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        logs.configure(args.verbose)
        return args.func(args)
    except (ValueError, PermissionError, LookupError, OoblexError) as exc:
        print(f"ooblex: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
