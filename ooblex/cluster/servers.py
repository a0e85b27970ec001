"""Start private ``redis-server`` / ``rabbitmq-server`` processes on free ports.

Used by ``ooblex up`` and by the tests: each server gets its own port(s) and a private
temporary directory, listens where asked (127.0.0.1 by default), and ``stop()`` removes it all.
RabbitMQ is launched directly (no systemd): every path and port it would share is made private.
With a password (``ooblex up`` always sets one), Redis refuses clients that do not ``AUTH``
and RabbitMQ has only its own user (no ``guest``); passwords live in the private directory's
config files (mode 0600), never on a command line where ``ps`` would show them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..errors import Unavailable

RABBITMQ_BIN = Path(os.environ.get("OOBLEX_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


class ServerError(Unavailable, RuntimeError):
    """A server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class RedisServer:
    """A throwaway redis-server bound to ``host``: no persistence and no password unless asked."""

    host: str = "127.0.0.1"
    port: int = 0
    netns: str | None = None
    #: Keep data across restarts (append-only file, fsync every second), as a production store would.
    persist: bool = False
    #: Clients must ``AUTH`` with it (``requirepass``); ``url`` carries it. None: no password.
    password: str | None = field(default=None, repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    dir: str = ""

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerError("redis-server is not installed (apt-get install redis-server)")
        self.port = self.port or free_port(self.host if self.netns is None else "127.0.0.1")
        self.dir = self.dir or tempfile.mkdtemp(prefix="ooblex-redis-")
        conf = [f"port {self.port}", f"bind {self.host}", 'save ""', f"appendonly {'yes' if self.persist else 'no'}",
                "appendfsync everysec", f'dir "{self.dir}"', "protected-mode no", "loglevel warning"]
        if self.password:
            conf.append(f'requirepass "{self.password}"')
        path = private_file(Path(self.dir, "redis.conf"), "\n".join(conf) + "\n")
        self.proc = subprocess.Popen(_in_netns(self.netns, [exe, str(path)]), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._wait()
        return self

    def _wait(self, timeout: float = 10.0) -> None:
        if self.netns is None:
            wait_port(self.host, self.port, timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ping = ["redis-cli", "-h", self.host, "-p", str(self.port), "ping"]
            ok = subprocess.run(_in_netns(self.netns, ping), capture_output=True,
                                env={**os.environ, "REDISCLI_AUTH": self.password or ""}).stdout.strip() == b"PONG"
            if ok:
                return
            time.sleep(0.1)
        raise ServerError(f"redis-server in netns {self.netns} did not answer")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (data survives only with ``persist``)."""
        self.stop()
        self.proc = None
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class RabbitMQServer:
    """A throwaway RabbitMQ node with private node name, ports, mnesia and logs.

    Clients log in as ``user``/``password``; with any other user than ``guest``, that user is the
    node's only one (``guest`` is never created)."""

    host: str = "127.0.0.1"
    port: int = 0
    dir: str = ""
    name: str = ""
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/"

    def start(self, timeout: float = 60.0) -> RabbitMQServer:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not server.exists():
            raise ServerError(f"{server} not found (apt-get install rabbitmq-server)")
        if not self.env:
            self._configure()
        subprocess.run([str(server), "-detached"], env=self.env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        ctl = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.env["RABBITMQ_NODENAME"], "wait",
               self.env["RABBITMQ_PID_FILE"], "--timeout", str(int(timeout))]
        if subprocess.run(ctl, env=self.env, capture_output=True).returncode != 0:
            self.stop()
            raise ServerError(f"rabbitmq-server did not start; logs in {self.env['RABBITMQ_LOG_BASE']}")
        wait_port(self.host, self.port, timeout)
        return self

    def _configure(self) -> None:
        self.port = self.port or free_port()
        self.dir = self.dir or tempfile.mkdtemp(prefix="ooblex-rabbit-")
        self.name = self.name or f"ooblex{self.port}@localhost"
        # The default user is created on the node's first boot (a fresh mnesia here), in guest's place.
        # guest may log in from other hosts: these nodes are private to a test or a dev cluster.
        conf = private_file(Path(self.dir, "rabbitmq.conf"),
                             f"listeners.tcp.1 = {self.host}:{self.port}\nloopback_users = none\n"
                             f"default_user = {self.user}\ndefault_pass = {self.password}\n")
        self.env = {**os.environ, "HOME": self.dir, "RABBITMQ_NODENAME": self.name,
                    "RABBITMQ_NODE_IP_ADDRESS": self.host, "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(free_port()), "ERL_EPMD_PORT": str(free_port()),
                    "RABBITMQ_MNESIA_BASE": f"{self.dir}/mnesia", "RABBITMQ_LOG_BASE": f"{self.dir}/log",
                    "RABBITMQ_PID_FILE": f"{self.dir}/rabbit.pid", "RABBITMQ_CONFIG_FILE": str(conf.with_suffix("")),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.dir}/enabled_plugins"}
        Path(self.dir, "enabled_plugins").write_text("[].\n")

    def stop(self) -> None:
        """Stop the node and its private epmd."""
        if not self.env:
            return
        pid = _read_pid(self.env["RABBITMQ_PID_FILE"])
        subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.env["RABBITMQ_NODENAME"], "stop"],
                       env=self.env, capture_output=True, timeout=60)
        if pid is not None:
            _wait_gone(pid, 15)
        _kill_epmd(self.env["ERL_EPMD_PORT"])

    def restart(self) -> None:
        pid = _read_pid(self.env["RABBITMQ_PID_FILE"])
        subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.env["RABBITMQ_NODENAME"], "stop"],
                       env=self.env, capture_output=True, timeout=60)
        if pid is not None:
            _wait_gone(pid, 15)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def terminate(proc: subprocess.Popen | None, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; None or an exited process is left as it is."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by this user only (it may hold a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _die_with_parent() -> None:
    """In the child: be stopped when the process that started us dies (even by SIGKILL). Linux only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _in_netns(netns: str | None, cmd: list[str]) -> list[str]:
    return cmd if netns is None else ["ip", "netns", "exec", netns, *cmd]


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _kill_epmd(port: str) -> None:
    """The node started an epmd on its private port; ``epmd -kill`` ends that one only."""
    exe = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    if exe is not None:
        subprocess.run([str(exe), "-kill"], env={**os.environ, "ERL_EPMD_PORT": port}, capture_output=True)
