"""How long a job stalls when a worker is killed in the middle of it, per broker.

    python benchmarks/dead_worker.py [--runs 3] [--frames 120]

Two ``ooblex worker`` processes serve a thread that holds each frame 15 ms; ``ob.process`` sends
a job through them with 6 frames in flight. After the 30th result one worker gets SIGKILL, with
frames of the job still unacknowledged in its hands. The stall is the longest gap between two
results after the kill: how long those frames wait before the other worker takes them over
(Redis: the dead worker's heartbeat connection closes; RabbitMQ: its channel closes and the
broker requeues). The usual gap between results (p50 before the kill) is printed beside it.
Starts private redis-server and rabbitmq-server instances and stops them at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ooblex as ob  # noqa: E402
from ooblex.cluster.servers import RabbitMQServer, RedisServer  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from cluster import worker_processes  # noqa: E402

KILL_AT = 30


@ob.tensor_thread(name="hold15")
def hold15(frame: np.ndarray) -> dict:
    """Holds each frame 15 ms without using the CPU (like waiting on a GPU)."""
    time.sleep(0.015)
    return {"pid": os.getpid()}


def one_run(broker: str, store: str, frames: int) -> tuple[float, float]:
    """(stall after the kill, p50 gap before it), in ms."""
    times: list[float] = []
    killed_at: list[int] = []
    with worker_processes(broker, store, 2) as procs:
        def progress(done: int, total: int | None) -> None:
            times.append(time.perf_counter())
            if done >= KILL_AT and not killed_at:
                killed_at.append(len(times))
                procs[0].send_signal(signal.SIGKILL)

        ob.deploy(hold15, cluster=broker, store=store).wait_ready(60, workers=2)
        out = ob.process("hold15", [np.zeros((48, 64, 3), np.uint8)] * frames, cluster=broker, store=store,
                         progress=progress, max_in_flight=6)
        assert out.frames_out == frames and killed_at, "every frame came back, after a kill"
    gaps = np.diff(times) * 1e3
    k = killed_at[0]
    return float(gaps[k - 1:].max()), float(np.median(gaps[: k - 1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=120)
    args = ap.parse_args()
    os.environ.setdefault("OOBLEX_SECRET", "benchmark-secret")
    redis, rabbit = RedisServer().start(), RabbitMQServer().start()
    try:
        print(f"## A worker killed mid-job ({args.frames} frames, kill after {KILL_AT}; ms)\n")
        print("| broker | run | stall after the kill | usual gap (p50) |")
        print("| --- | ---: | ---: | ---: |")
        for name, url in (("redis", redis.url), ("rabbitmq", rabbit.url)):
            for run in range(args.runs):
                stall, usual = one_run(url, redis.url, args.frames)
                print(f"| {name} | {run + 1} | {stall:.0f} | {usual:.1f} |", flush=True)
    finally:
        rabbit.cleanup()
        redis.cleanup()


if __name__ == "__main__":
    main()
