"""``ooblex up``: a whole local cluster in one command, stopped with Ctrl-C.

Starts ``redis-server`` (and ``rabbitmq-server``) as child processes on free ports, a gateway
(``ooblex gateway`` when this build has one; with ``--gateways N``, N of them behind HAProxy on the
port) and N ``ooblex worker`` processes (each serving Prometheus metrics on a loopback port), all sharing one
``OOBLEX_SECRET``. Redis requires a random password and keeps an append-only file; RabbitMQ has
its own user with a random password (no ``guest``). The credentials go to the children through
their environment and to the user through a private env file (mode 0600, deleted on exit):
what is printed (the ``ready`` line) names URLs without passwords. Then it supervises.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..broker.base import redact
from .balancer import Balancer
from .servers import RabbitMQServer, RedisServer, free_port, private_file


def store_server() -> RedisServer:
    """The cluster's Redis: a random password, append-only persistence."""
    return RedisServer(password=secrets.token_urlsafe(24), persist=True)


def rabbitmq_server() -> RabbitMQServer:
    """The cluster's RabbitMQ: its own user with a random password (``guest`` does not exist)."""
    return RabbitMQServer(user="ooblex", password=secrets.token_urlsafe(24))


def read_env(path: str | Path) -> dict[str, str]:
    """The variables of the env file ``ooblex up`` writes (``export NAME=value`` lines)."""
    lines = Path(path).read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if "=" in line)


def up(workers: int = 2, broker: str = "redis", host: str = "127.0.0.1", port: int = 8800,
       threads: list[str] = (), gateways: int = 1) -> int:  # type: ignore[assignment]
    if workers < 0 or gateways < 0:
        raise ValueError(f"--workers and --gateways must be >= 0, got {workers} and {gateways}")
    servers: list[Any] = []
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    private = tempfile.mkdtemp(prefix="ooblex-up-")  # mode 0700
    stopping = {"now": False}

    def on_signal(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        redis = store_server().start()
        servers.append(redis)
        broker_url = redis.url
        if broker == "rabbitmq":
            rabbit = rabbitmq_server().start()
            servers.append(rabbit)
            broker_url = rabbit.url
        secret = os.environ.get("OOBLEX_SECRET") or secrets.token_urlsafe(32)
        cluster = {"OOBLEX_BROKER": broker_url, "OOBLEX_STORE": redis.url, "OOBLEX_SECRET": secret}
        env_file = private_file(Path(private, "env"), "".join(f"export {k}={v}\n" for k, v in cluster.items()))
        env = {**os.environ, **cluster}
        me = [sys.executable, "-m", "ooblex"]
        gateway_url, instances = None, []
        if gateways:
            gateway_url = f"http://{host}:{port}"
            instances = start_gateways(children, servers, gateways, host, port, env)
        extra = [a for t in threads for a in ("--thread", t)]
        metrics = []
        for i in range(workers):
            mport = free_port("127.0.0.1")
            metrics.append(f"http://127.0.0.1:{mport}/metrics")
            args = [*me, "worker", *extra, "--metrics-host", "127.0.0.1", "--metrics-port", str(mport)]
            children.append((f"worker{i + 1}", subprocess.Popen(args, env=env)))
        ready = {"broker": redact(broker_url), "store": redact(redis.url), "gateway": gateway_url,
                 "gateways": instances, "balancer": gateway_url if gateways > 1 else None,
                 "workers": workers, "worker_metrics": metrics, "env_file": str(env_file)}
        print("ooblex up: ready " + json.dumps(ready), flush=True)
        print(f"  source {env_file}    # OOBLEX_BROKER, OOBLEX_STORE, OOBLEX_SECRET (mode 0600, deleted on exit)\n"
              "  then: ob.deploy(my_thread)  |  Ctrl-C stops everything", flush=True)
        if gateway_url:
            print(f"  console: {gateway_url}/console   (log in with: ooblex token control)", flush=True)
        return _supervise(children, stopping)
    finally:
        for _, proc in children:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in children:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s in reversed(servers):
            s.cleanup()
        shutil.rmtree(private, ignore_errors=True)


def start_gateways(children: list[tuple[str, subprocess.Popen[bytes]]], servers: list[Any], count: int, host: str,
                   port: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """One gateway on ``host:port``, or ``count`` gateways on free ports behind HAProxy on ``host:port``
    (each forwards requests about the others' streams to them: ``ooblex.gateway.peers``)."""
    me = [sys.executable, "-m", "ooblex", "gateway"]
    loopback = ["--loopback"] if host.startswith("127.") else []  # same-machine WebRTC peers
    # no --broker: the gateway reads $OOBLEX_BROKER, so no password shows in ``ps``
    if count == 1:
        children.append(("gateway", subprocess.Popen([*me, "--host", host, "--port", str(port), *loopback], env=env)))
        return [{"url": f"http://{host}:{port}", "pid": children[-1][1].pid}]
    local = "127.0.0.1" if host in ("0.0.0.0", "") else host
    trusted = ",".join(filter(None, [env.get("OOBLEX_TRUSTED_PROXIES", ""), local]))  # the balancer and peers
    instances = []
    for i in range(count):
        p = free_port(local)
        args = [*me, "--host", host, "--port", str(p), *loopback, "--public-url", f"http://{host}:{port}",
                "--peer-url", f"http://{local}:{p}"]
        children.append((f"gateway{i + 1}", subprocess.Popen(args, env={**env, "OOBLEX_TRUSTED_PROXIES": trusted})))
        instances.append({"url": f"http://{local}:{p}", "pid": children[-1][1].pid})
    servers.append(Balancer(host, port, [(local, int(g["url"].rsplit(":", 1)[1])) for g in instances]).start())
    return instances


def _supervise(children: list[tuple[str, subprocess.Popen[bytes]]], stopping: dict[str, bool]) -> int:
    """Wait for Ctrl-C; report a child that dies (the rest keep running)."""
    reported: set[str] = set()
    while not stopping["now"]:
        for name, proc in children:
            if proc.poll() is not None and name not in reported:
                reported.add(name)
                print(f"ooblex up: {name} exited with status {proc.returncode}", file=sys.stderr, flush=True)
        if children and len(reported) == len(children):
            return 1
        time.sleep(0.2)
    print("ooblex up: stopping", file=sys.stderr, flush=True)
    return 0
