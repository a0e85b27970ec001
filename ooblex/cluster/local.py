"""A whole cluster on this machine as one child process: ``ooblex up`` started and stopped from Python.

``ob.cluster()`` uses it (``current.py``); inside Jupyter the server extension owns one
(``ooblex_server_ext.owned``) so that it outlives the kernel. The child prints a ``ready`` line
with URLs (no passwords) and writes the credentials to a private env file (mode 0600), read here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from ..errors import Unavailable
from .servers import free_port
from .up import read_env

READY = "ooblex up: ready "
#: How long ``ooblex up`` may take to start Redis, a gateway and its workers.
START_TIMEOUT_S = 60.0


class LocalCluster:
    """``ooblex up`` as a child process: Redis, one gateway on a free port, ``workers`` workers."""

    def __init__(self, workers: int = 1, host: str = "127.0.0.1", port: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a local cluster needs at least one worker, got {workers}")
        self.workers = workers
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.env: dict[str, str] = {}

    def start(self, timeout: float = START_TIMEOUT_S) -> LocalCluster:
        cmd = [sys.executable, "-m", "ooblex", "up", "--workers", str(self.workers), "--host", self.host,
               "--port", str(self.port)]
        # its logs stay out of notebook cells and server logs; the ready line is all we need
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        lines: list[str] = []
        reader = threading.Thread(target=self._read, args=(lines,), name="ooblex-cluster-out", daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(lines[-20:]).strip() or "(no output)"
                raise Unavailable(f"the local cluster did not start (ooblex up): {tail}")
            time.sleep(0.05)
        self.env = read_env(self.ready["env_file"])
        self._wait_for_gateway(deadline, lines)
        return self

    def _wait_for_gateway(self, deadline: float, lines: list[str]) -> None:
        """``ooblex up`` says ready once it has started its children; the gateway answers a moment later."""
        if not self.gateway:
            return
        while True:
            try:
                with urllib.request.urlopen(f"{self.gateway}/healthz", timeout=2):  # noqa: S310 - our own child
                    return
            except OSError:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = "".join(lines[-20:]).strip() or "(no output)"
                    raise Unavailable(f"the local cluster's gateway did not answer: {tail}") from None
                time.sleep(0.1)

    def _read(self, lines: list[str]) -> None:
        """Reads the child's output to its end (a full pipe would stall it); keeps the last lines for errors."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(READY) and not self.ready:
                self.ready = json.loads(line.removeprefix(READY))
            lines.append(line)
            del lines[:-50]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def gateway(self) -> str | None:
        return self.ready.get("gateway")

    def stop(self, timeout: float = 30.0) -> None:
        """Ctrl-C for ``ooblex up``: it stops its gateway, workers and Redis (idempotent)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
