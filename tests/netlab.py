"""Small networks of namespaces for tests and benchmarks: hosts, links, routes, NAT, firewalls.

    with Lab() as lab:
        client, router = lab.host("client"), lab.host("router")
        lab.link(client, "10.1.0.2/24", router, "10.1.0.1/24")
        lab.sh(client, "ip route add default via 10.1.0.1")
        proc = lab.spawn(client, ["python3", "-c", "..."])

Each host is a named network namespace (``ip netns``) whose name carries this process id, so
parallel runs never collide; everything (namespaces, the processes spawned in them) is removed
when the ``with`` block ends. Needs root and iproute2; ``problem()`` says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


def problem() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2 not installed"
    return None


class Lab:
    """Named network namespaces, removed on exit (see the module docstring)."""

    def __init__(self, prefix: str = "ob") -> None:
        self.tag = f"{prefix}{os.getpid()}"
        self.hosts: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._links = 0

    def host(self, name: str, forward: bool = False) -> str:
        """A new namespace with ``lo`` up (``forward``: it routes between its links)."""
        ns = f"{self.tag}-{name}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.hosts.append(ns)
        self.sh(ns, "ip link set lo up")
        if forward:
            self.sh(ns, "sysctl -qw net.ipv4.ip_forward=1")
        return ns

    def link(self, a: str, addr_a: str, b: str, addr_b: str) -> tuple[str, str]:
        """A veth pair between hosts ``a`` and ``b`` with these addresses (CIDR); its two interface names."""
        self._links += 1
        dev_a, dev_b = f"v{self._links}a", f"v{self._links}b"
        subprocess.run(["ip", "-n", a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", b],
                       check=True)
        for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            self.sh(ns, f"ip addr add {addr} dev {dev} && ip link set {dev} up")
        return dev_a, dev_b

    def sh(self, ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell ``script`` in ``ns``; raises with its output when ``check`` and it fails."""
        done = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"[{ns}] {script}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def spawn(self, ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in ``ns``; it is killed when the lab closes."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in reversed(self.hosts):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.hosts.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
