"""How long Chromium's jitter buffer holds the processed video, by return-track timestamps.

The demo page streams a fake webcam over WHIP through a thread whose compute time varies
(5-50 ms, like a real model) and reads ``jitterBufferDelay / jitterBufferEmittedCount`` of the
returned video from ``getStats`` over an 8 s window, once with ``return_timestamps="send"``
(the default) and once with ``"input"``. Runs inside ``unshare -n`` (loopback only).

    python benchmarks/browser_playout.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ooblex import tensor_thread  # noqa: E402
from ooblex.gateway import Settings  # noqa: E402
from tests.gateway_server import running_gateway  # noqa: E402
from tests.test_gateway_browser import CHROMIUM, FLAGS, until  # noqa: E402

STATS = """async () => { const r = await session.pc.getStats(); let o = null;
  r.forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video')
    o = {delay: s.jitterBufferDelay, count: s.jitterBufferEmittedCount, frames: s.framesDecoded}; });
  return o; }"""


@tensor_thread(name="varying")
def varying(frame):  # noqa: ANN001, ANN201
    """Identity that takes 5-50 ms, like a model whose compute time varies."""
    time.sleep(random.uniform(0.005, 0.05))
    return frame


async def measure(stamps: str, window_s: float = 8.0) -> tuple[float, int]:
    from playwright.async_api import async_playwright

    settings = Settings(loopback_candidates=True, return_timestamps=stamps)
    with running_gateway(threads=[varying], settings=settings) as gw:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{gw.url}/?thread=varying&autostart=1")
                await until(page, "document.getElementById('output').videoWidth > 0", 30)
                await asyncio.sleep(3)  # past start-up
                a = await page.evaluate(STATS)
                await asyncio.sleep(window_s)
                b = await page.evaluate(STATS)
            finally:
                await browser.close()
    frames = b["count"] - a["count"]
    return 1000 * (b["delay"] - a["delay"]) / max(1, frames), b["frames"] - a["frames"]


async def run(rounds: int) -> None:
    rows = []
    for _ in range(rounds):
        for stamps in ("send", "input"):
            ms, frames = await measure(stamps)
            rows.append((stamps, ms, frames))
            print(f"  {stamps}: {ms:.1f} ms over {frames} frames", flush=True)
    print(f"\nChromium jitter buffer per frame, thread taking 5-50 ms ({os.cpu_count()} cores)\n")
    print("| return_timestamps | jitter buffer ms/frame | frames |\n| --- | ---: | ---: |")
    for stamps, ms, frames in rows:
        print(f"| {stamps} | {ms:.1f} | {frames} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.environ.get("OOBLEX_IN_NETNS") != "1":
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", cmd], env={**os.environ, "OOBLEX_IN_NETNS": "1"})
    asyncio.run(run(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
