"""What reaching a stream through another gateway costs: WHEP set-up and MJPEG relayed by a peer vs direct.

    python benchmarks/gateways.py [--rounds 10]

Starts ``ooblex up --gateways 2 --workers 1`` (Redis, two gateways, HAProxy), publishes one
640x480@30 WHIP stream to gateway 1, then for each path (gateway 1 itself, gateway 2 forwarding to
it, the balancer) times a WHEP viewer from offer to answer and to its first frame, and an MJPEG
viewer's frames per second and the relaying gateway's CPU per relayed frame (from /proc). Inside a
private network namespace (re-executes itself under ``unshare -n``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from capacity import cpu_seconds  # noqa: E402
from webrtc_rtt import moving_picture  # noqa: E402


def start_up() -> tuple[subprocess.Popen[str], dict]:
    from ooblex.cluster.servers import free_port
    from ooblex.cluster.up import read_env

    up = subprocess.Popen([sys.executable, "-m", "ooblex", "up", "--gateways", "2", "--workers", "1", "--port",
                           str(free_port())], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "OOBLEX_SECRET": ""})
    line = ""
    while "ready" not in line:
        line = up.stdout.readline()
    info = json.loads(line.split("ready ", 1)[1])
    os.environ["OOBLEX_SECRET"] = read_env(info["env_file"])["OOBLEX_SECRET"]
    return up, info


async def measure(info: dict, rounds: int) -> None:
    from ooblex.tokens import mint
    from ooblex.webrtc.client import ImageTrack, WhepClient, WhipClient

    token = mint("control")
    g1, g2 = info["gateways"]
    async with httpx.AsyncClient(timeout=5) as http:
        for url in (g1["url"], g2["url"], info["gateway"]):
            for _ in range(150):
                try:
                    if (await http.get(url + "/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
    await asyncio.sleep(3)
    pub = WhipClient(g1["url"] + "/whip/identity", ImageTrack(moving_picture(), fps=30), token=token)
    await pub.start()
    await pub.wait_connected()
    sid = pub.stream_id
    drain = asyncio.create_task(_drain(pub.remote))
    print(f"WHEP and MJPEG of one 640x480@30 stream held by gateway 1 ({platform.machine()}, {os.cpu_count()} "
          f"cores, load {os.getloadavg()[0]:.1f}), {rounds} rounds\n")
    print("| path | WHEP offer -> answer p50 ms | WHEP offer -> first frame p50 ms | MJPEG fps | relaying "
          "gateway CPU ms per MJPEG frame |\n| --- | ---: | ---: | ---: | ---: |")
    for name, base, relay in (("gateway 1 (holds the stream)", g1["url"], None),
                              ("gateway 2 -> gateway 1 (forwarded)", g2["url"], g2["pid"]),
                              ("HAProxy -> either gateway", info["gateway"], None)):
        answers, firsts = [], []
        for _ in range(rounds):
            viewer = WhepClient(f"{base}/whep/{sid}", token=token)
            t0 = time.perf_counter()
            await viewer.start()
            answers.append(time.perf_counter() - t0)
            await asyncio.wait_for(viewer.remote.recv(), 10)
            firsts.append(time.perf_counter() - t0)
            await viewer.close()
        fps, cpu_ms = await _mjpeg(f"{base}/mjpeg/{sid}", token, relay)
        print(f"| {name} | {np.median(answers) * 1e3:.1f} | {np.median(firsts) * 1e3:.1f} | {fps:.1f} | "
              f"{cpu_ms if cpu_ms is not None else '-'} |", flush=True)
    drain.cancel()
    await pub.close()


async def _drain(track) -> None:  # noqa: ANN001
    while True:
        await track.recv()


async def _mjpeg(url: str, token: str, relay_pid: int | None, seconds: float = 5.0) -> tuple[float, float | None]:
    frames = 0
    async with httpx.AsyncClient(timeout=None) as http:
        async with http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as r:
            t0, cpu0 = time.monotonic(), cpu_seconds(relay_pid) if relay_pid else 0.0
            buf, marker = b"", b"Content-Type: image/jpeg"
            async for chunk in r.aiter_raw():  # a relay may split a part header across chunks
                buf += chunk
                n = buf.count(marker)
                frames += n
                buf = buf[buf.rfind(marker) + len(marker):] if n else buf[-len(marker):]
                if time.monotonic() - t0 > seconds:
                    break
            wall = time.monotonic() - t0
            cpu = (cpu_seconds(relay_pid) - cpu0) if relay_pid else None
    return frames / wall, (round(cpu * 1e3 / max(frames, 1), 2) if cpu is not None else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if os.environ.get("OOBLEX_IN_NETNS") != "1":
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", cmd], env={**os.environ, "OOBLEX_IN_NETNS": "1"})
    up, info = start_up()
    try:
        asyncio.run(measure(info, args.rounds))
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
