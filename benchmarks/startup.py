"""How fast Ooblex starts and how much memory it holds while idle: ``import ooblex``, ``ooblex demo``
and ``ooblex gateway`` (memory broker), each in a fresh process.

    python benchmarks/startup.py [--runs 3] [--idle-s 5]

"healthz" is the time from starting the process to the first 200 from ``/healthz`` (for ``import
ooblex``: to the end of the import), "CPU s to ready" the CPU time it used until then (what a busy
machine stretches less); "idle RSS" is the process's resident memory ``--idle-s`` seconds
later (medians of ``--runs``); "frameworks" are the ML runtimes mapped into it (``/proc/PID/maps``). Run it on two
checkouts (``PYTHONPATH=...``) to compare them.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import ooblex

#: The checkout whose ``ooblex`` is measured: the one this script imports (``PYTHONPATH=...`` picks it); its
#: processes run there, since ``python -m`` and ``-c`` put their working directory first on ``sys.path``.
CHECKOUT = Path(ooblex.__file__).resolve().parents[1]
#: Shared-library name fragments of each framework, as they appear in /proc/PID/maps.
FRAMEWORKS = {"torch": "libtorch", "tensorflow": "libtensorflow", "onnxruntime": "onnxruntime", "dlib": "dlib"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used: what starting costs, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frameworks(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, lib in FRAMEWORKS.items() if lib in maps]


def measure_import() -> tuple[float, float, float, list[str]]:
    code = "import sys, ooblex; print(flush=True); sys.stdin.readline()"
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=CHECKOUT)
    assert p.stdout is not None and p.stdin is not None
    p.stdout.readline()
    out = (time.perf_counter() - start, cpu_s(p.pid), rss_mb(p.pid), frameworks(p.pid))
    p.stdin.write("\n")
    p.stdin.close()
    p.wait(10)
    return out


def measure_server(args: list[str], idle_s: float) -> tuple[float, float, float, list[str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOBLEX_")}
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "ooblex", *args, "--port", str(port)], env=env, cwd=CHECKOUT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"ooblex {' '.join(args)} exited with {p.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.02)
        ready, cpu = time.perf_counter() - start, cpu_s(p.pid)
        time.sleep(idle_s)
        return ready, cpu, rss_mb(p.pid), frameworks(p.pid)
    finally:
        p.terminate()
        p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=5.0)
    a = ap.parse_args()
    cases = {"import ooblex": measure_import,
             "ooblex demo": lambda: measure_server(["demo"], a.idle_s),
             "ooblex gateway (memory://)": lambda: measure_server(["gateway", "--broker", "memory://"], a.idle_s)}
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"ooblex from {CHECKOUT}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.runs} runs, "
          f"idle RSS {a.idle_s:g} s after ready")
    print(f"{'process':28} {'healthz s (median, max)':>24} {'CPU s to ready':>15} {'idle RSS MB':>12}  "
          "frameworks loaded")
    for name, measure in cases.items():
        runs = [measure() for _ in range(a.runs)]
        ready = [r[0] for r in runs]
        loaded = sorted({f for r in runs for f in r[3]})
        print(f"{name:28} {statistics.median(ready):>15.2f} {max(ready):>8.2f} "
              f"{statistics.median(r[1] for r in runs):>15.2f} {statistics.median(r[2] for r in runs):>12.0f}  "
              f"{', '.join(loaded) or 'none'}")
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
