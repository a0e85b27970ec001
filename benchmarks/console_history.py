"""What the console's per-second stream history costs the gateway's event loop.

    python benchmarks/console_history.py [--seconds 30] [--fps 30]

Once a second the gateway samples every open stream (``History.sample``: counters, and each stage's
median and the total's 95th percentile over that second's frames) on its event loop, and the console
asks for the last minutes (``History.since``). Prints, per number of streams, the time one sample and
one full read take (median and max over ``--seconds`` samples), with real ``StreamStats`` filled at
``--fps`` frames per second per stream.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from types import SimpleNamespace

import numpy as np

from ooblex.frame import Frame
from ooblex.gateway.history import History
from ooblex.stats import StreamStats

STAMPS = {"captured": 0.0, "received": 0.001, "queued": 0.002, "started": 0.003, "finished": 0.010,
          "returned": 0.011, "sent": 0.012}


def run(streams: int, seconds: int, fps: int) -> tuple[list[float], float]:
    fake = [SimpleNamespace(id=f"s{i}", stats=StreamStats(), created=time.time() - 1, thread=SimpleNamespace(name="t"))
            for i in range(streams)]
    history = History(300)
    frame = Frame(np.zeros((2, 2, 3), np.uint8))
    costs, start = [], time.time()
    for second in range(seconds):
        for s in fake:
            for _ in range(fps):
                s.stats.received()
                frame.stamps = dict(STAMPS)
                s.stats.record(frame)
        t0 = time.perf_counter()
        history.sample(fake, now=start + second + 1)
        costs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    history.since(0)
    return costs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--fps", type=int, default=30)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{args.fps} fps per stream, {args.seconds} samples")
    print(f"{'streams':>8} {'sample p50 ms':>14} {'sample max ms':>14} {'read all ms':>12}")
    for n in (1, 16, 64, 256):
        costs, read = run(n, args.seconds, args.fps)
        print(f"{n:>8} {np.median(costs) * 1e3:>14.2f} {max(costs) * 1e3:>14.2f} {read * 1e3:>12.2f}")


if __name__ == "__main__":
    main()
