"""Round trip of a deployed lane (``ob.live(deployment)``) per transport, beside the notebook's own lane.

    python benchmarks/deployed_lane.py [--frames 300] [--size 640x480]

Starts a local cluster (``ob.cluster()``: Redis, one gateway, one worker), deploys ``inv``
(``255 - frame``) and calls each lane's thread the way the live widget does, one frame in flight,
on a moving picture: the notebook's own function, then the deployment over WebRTC (WHIP, VP8 both ways)
and over the WebSocket (a JPEG per frame). Prints p50/p95 of each call and the gateway's own share.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ooblex as ob  # noqa: E402
from ooblex.jupyter.deployed import as_lane_thread  # noqa: E402


def inv(frame: np.ndarray) -> np.ndarray:
    return 255 - frame


def pictures(width: int, height: int, count: int) -> list[np.ndarray]:
    """A gradient that moves a few pixels per frame: what a camera gives an encoder, roughly."""
    x = np.arange(width + count * 4)
    row = ((np.sin(x / 23.0) + 1) * 127).astype(np.uint8)
    return [np.dstack([np.tile(row[i * 4:i * 4 + width], (height, 1))] * 3) for i in range(count)]


def measure(call, frames: list[np.ndarray]) -> dict[str, float]:
    times, gateway, lost = [], [], 0
    call(frames[0])  # connects (and loads) outside the measurement
    for frame in frames:
        started = time.perf_counter()
        out = call(frame)
        times.append((time.perf_counter() - started) * 1e3)
        if isinstance(out, tuple):
            image, result = out
            lost += image is None
            if result.get("gateway_ms") is not None:
                gateway.append(float(result["gateway_ms"]))
    p50, p95 = np.percentile(times, [50, 95])
    return {"p50": p50, "p95": p95, "gateway": float(np.median(gateway)) if gateway else float("nan"),
            "lost": lost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="640x480")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = pictures(width, height, args.frames)
    cluster = ob.cluster()
    try:
        dep = ob.deploy(inv, wait=90)
        rows = [("notebook (the function itself)", measure(inv, frames))]
        for transport in ("webrtc", "websocket"):
            lane = as_lane_thread(dep, transport)
            try:
                rows.append((f"cluster over {transport}", measure(lane.call, frames)))
            finally:
                lane.teardown()
    finally:
        cluster.stop()
    print(f"\n{args.frames} frames at {width}x{height}, one in flight; load average "
          f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)\n")
    print("| lane | p50 ms | p95 ms | gateway p50 ms | lost |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(f"| {name} | {r['p50']:.1f} | {r['p95']:.1f} | {r['gateway']:.1f} | {r['lost']} |")


if __name__ == "__main__":
    main()
