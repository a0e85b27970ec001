"""Fixtures that start real redis-server / rabbitmq-server processes (stopped by the same tests)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ooblex.cluster.servers import RABBITMQ_BIN, RabbitMQServer, RedisServer

ROOT = Path(__file__).resolve().parents[1]
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
needs_rabbitmq = pytest.mark.skipif(not (RABBITMQ_BIN / "rabbitmq-server").exists(),
                                    reason="rabbitmq-server not installed")
SECRET = "test-secret-" + "x" * 20


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def rabbit_server() -> Iterator[RabbitMQServer]:
    server = RabbitMQServer().start()
    yield server
    server.cleanup()


async def wait_for(cond, timeout: float = 15.0, what: str = "condition"):  # noqa: ANN001, ANN201
    """``cond()``'s first truthy value (``cond`` may be a coroutine function), polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await cond() if asyncio.iscoroutinefunction(cond) else cond()
        if v:
            return v
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this worktree's ooblex first, the test secret set."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OOBLEX_SECRET": SECRET, **extra}


def start_worker(broker: str, store: str | None = None, *extra: str, netns: str | None = None,
                 **env_extra: str) -> subprocess.Popen[bytes]:
    """``ooblex worker`` in its own process (optionally inside a network namespace)."""
    cmd = [sys.executable, "-m", "ooblex", "worker", "--broker", broker, *extra]
    if store:
        cmd += ["--store", store]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, env=env(**env_extra), cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
