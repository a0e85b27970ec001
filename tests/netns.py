"""Run a test inside a private network namespace with only ``lo`` up.

WebRTC tests must stay on loopback: ``@in_netns`` re-runs the decorated test (by its pytest
node id) under ``unshare -n`` with ``lo`` up, so ICE can only ever use 127.0.0.1 and nothing
reaches the real network. The outer test passes or fails with the inner run and shows its output.
Async tests are run with ``asyncio.run`` inside the namespace.

    from .netns import in_netns

    @in_netns
    async def test_round_trip():
        ...

Needs ``unshare`` (util-linux) and ``ip`` (iproute2) and the right to create network
namespaces (root, or unprivileged user namespaces); otherwise the test is skipped saying why.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV_FLAG = "OOBLEX_IN_NETNS"


def netns_problem() -> str | None:
    """Why tests cannot run in a namespace here, or None if they can."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = subprocess.run(_wrap(["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


def _wrap(argv: list[str]) -> list[str]:
    prefix = [] if os.geteuid() == 0 else ["-r"]  # map to root in a user namespace when not root
    cmd = "ip link set lo up && exec " + " ".join(_quote(a) for a in argv)
    return ["unshare", *prefix, "-n", "sh", "-c", cmd]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def inside() -> bool:
    return os.environ.get(ENV_FLAG) == "1"


def in_netns(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run this test in a fresh network namespace (see module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if inside():
            result = fn(*args, **kwargs)
            return asyncio.run(result) if inspect.iscoroutine(result) else result
        problem = netns_problem()
        if problem:
            pytest.skip(f"WebRTC test needs a network namespace: {problem}")
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {**os.environ, ENV_FLAG: "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        timeout = _timeout(wrapper)
        argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs", node]
        proc = subprocess.run(_wrap(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        print(output)
        if proc.returncode == 5 or " skipped" in output and " passed" not in output:
            pytest.skip(f"skipped inside the namespace:\n{output[-2000:]}")
        assert proc.returncode == 0, f"test failed inside the network namespace:\n{output[-6000:]}"

    return wrapper


def _timeout(fn: Callable[..., Any]) -> float:
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "timeout" and mark.args:
            return float(mark.args[0])
    return 110.0
