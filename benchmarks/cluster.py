"""Cluster benchmarks: latency each broker adds per frame, and throughput with 1, 2, 4 workers.

    python benchmarks/cluster.py [--frames 300] [--throughput-frames 300]

1. Round trip of one 640x480 frame, gateway -> worker -> gateway, one at a time, through each
   broker's ``submit / tasks / reply / results`` (wire encoding included), against a bare client
   round trip of the same bytes (redis-py lists: RPUSH/BLPOP both ways; aio-pika: publish/consume
   both ways). "added" = broker p50 - bare p50: what Ooblex's own code costs on top of the network
   hop, for the JPEG wire codec and for raw pixels.
2. Throughput of a job (``ob.process``) through a thread that holds each frame 20 ms without
   using the CPU (a stand-in for a GPU model), with 1, 2 and 4 ``ooblex worker`` processes.
Starts private redis-server and rabbitmq-server instances and stops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ooblex as ob  # noqa: E402
from ooblex import wire  # noqa: E402
from ooblex.broker import connect  # noqa: E402
from ooblex.cluster.servers import RabbitMQServer, RedisServer  # noqa: E402
from ooblex.frame import Frame  # noqa: E402


def pct(xs: list[float]) -> tuple[float, float, float]:
    p = np.percentile(np.array(xs) * 1e3, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def make_frame() -> Frame:
    """The camera-like picture of engine_overhead.py: gradients plus noise (realistic JPEG size/cost)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    img = np.stack([x * 255 / 640, y * 255 / 480, (x + y) * 127 / 1120], -1)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return Frame(img, stream_id="bench", thread="bench", reply_to="gw.bench", stamps={"received": time.time()})


async def broker_round_trip(url: str, codec: str, n: int) -> list[float]:
    opts = {} if url.startswith("memory") else {"codec": codec}
    broker = connect(url, **opts)
    await broker.start()

    async def work() -> None:
        async for d in broker.tasks(["bench"]):
            await broker.reply(d.frame)
            d.ack()

    results = broker.results("gw.bench")
    worker = asyncio.create_task(work())
    base = make_frame()
    times = []
    try:
        for i in range(n + 20):
            f = Frame(base.image, stream_id="bench", seq=i, thread="bench", reply_to="gw.bench")
            t0 = time.perf_counter()
            await broker.submit(f, live=True)
            await results.__anext__()
            if i >= 20:
                times.append(time.perf_counter() - t0)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await results.aclose()
        await broker.close()
    return times


async def engine_round_trip(url: str, codec: str, n: int) -> list[float]:
    """The whole path a live stream takes: Stream.submit -> broker -> Worker (identity) -> broker -> Stream.get.

    The identity thread leaves the pixels unchanged, so the worker sends none back: one wire
    encode/decode per round trip instead of two (the same holds for every result-only thread).
    """
    engine = ob.Engine(connect(url, codec=codec), embedded_worker=True)
    await engine.start()
    stream = engine.open("identity", mode="live", max_in_flight=1)
    img = make_frame().image
    times = []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            await stream.submit(img)
            await stream.get(timeout=10)
            if i >= 20:
                times.append(time.perf_counter() - t0)
    finally:
        await engine.close()
    return times


async def bare_redis(url: str, payload: bytes, n: int) -> list[float]:
    import redis.asyncio as aioredis

    gw, wk = aioredis.from_url(url), aioredis.from_url(url)

    async def work() -> None:
        while True:
            _, data = await wk.blpop(["bare:q"])
            await wk.rpush("bare:r", data)

    worker = asyncio.create_task(work())
    times = []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            await gw.rpush("bare:q", payload)
            await gw.blpop(["bare:r"])
            if i >= 20:
                times.append(time.perf_counter() - t0)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await gw.aclose()
        await wk.aclose()
    return times


async def bare_amqp(url: str, payload: bytes, n: int) -> list[float]:
    import aio_pika

    conn = await aio_pika.connect(url)
    ch_gw, ch_wk = await conn.channel(), await conn.channel()
    q = await ch_wk.declare_queue("bare.q", auto_delete=True)
    r = await ch_gw.declare_queue("bare.r", auto_delete=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_task(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        await ch_wk.default_exchange.publish(aio_pika.Message(msg.body), "bare.r")

    async def on_result(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        got.put_nowait(msg.body)

    await q.consume(on_task, no_ack=True)
    await r.consume(on_result, no_ack=True)
    times = []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            await ch_gw.default_exchange.publish(aio_pika.Message(payload), "bare.q")
            await got.get()
            if i >= 20:
                times.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    return times


@ob.tensor_thread(name="hold20")
def hold20(frame: np.ndarray) -> dict:
    """Holds each frame 20 ms without using the CPU (like waiting on a GPU)."""
    time.sleep(0.02)
    return {"ok": 1}


@contextlib.contextmanager
def worker_processes(broker: str, store: str, n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` ``ooblex worker`` processes of this checkout, stopped on the way out."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "ooblex", "worker", "--broker", broker, "--store", store],
                              env=env, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def throughput(broker: str, store: str, workers: int, frames: int) -> float:
    with worker_processes(broker, store, workers):
        ob.deploy(hold20, cluster=broker, store=store).wait_ready(60, workers=workers)
        img = make_frame().image
        t0 = time.perf_counter()
        out = ob.process("hold20", [img] * frames, cluster=broker, store=store, progress=False,
                         max_in_flight=4 * workers)
        assert out.frames_out == frames
        return frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--throughput-frames", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("OOBLEX_SECRET", "benchmark-secret")
    redis, rabbit = RedisServer().start(), RabbitMQServer().start()
    try:
        print(f"## Round trip of one 640x480 frame ({args.frames} frames, p50/p95/p99 ms)\n")
        frame = make_frame()
        data = wire.encode(frame, "jpeg")
        enc = pct([_timed(lambda: wire.encode(frame, "jpeg")) for _ in range(200)])[0]
        dec = pct([_timed(lambda: wire.decode(data)) for _ in range(200)])[0]
        raw = wire.encode(frame, "raw")
        codec_ms = {"jpeg": 2 * (enc + dec), "raw": 2 * pct([_timed(lambda: wire.decode(wire.encode(frame, "raw")))
                                                              for _ in range(200)])[0]}
        print("| path | codec | bytes | p50 | p95 | p99 | added p50 vs bare | of which wire coding |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        mem = asyncio.run(broker_round_trip("memory://", "raw", args.frames))
        print(f"| memory broker | by reference | 0 | {'| '.join(f'{v:.3f} ' for v in pct(mem))}| - | - |")
        for codec in ("jpeg", "raw"):
            payload = wire.encode(frame, codec)  # type: ignore[arg-type]
            for name, url, bare in (("redis", redis.url, bare_redis), ("rabbitmq", rabbit.url, bare_amqp)):
                b = pct(asyncio.run(bare(url, payload, args.frames)))
                k = pct(asyncio.run(broker_round_trip(url, codec, args.frames)))
                client = "redis-py RPUSH/BLPOP" if name == "redis" else "aio-pika publish/consume"
                print(f"| bare {client} | {codec} | {len(payload)} | {b[0]:.3f} | {b[1]:.3f} | {b[2]:.3f} | - | - |")
                print(f"| ooblex {name} broker | {codec} | {len(payload)} | {k[0]:.3f} | {k[1]:.3f} | {k[2]:.3f} "
                      f"| {k[0] - b[0]:+.3f} | {codec_ms[codec]:.3f} |", flush=True)
                e = pct(asyncio.run(engine_round_trip(url, codec, args.frames)))
                print(f"| ooblex {name} stream + worker, identity | {codec} | {len(payload)} | {e[0]:.3f} | "
                      f"{e[1]:.3f} | {e[2]:.3f} | {e[0] - b[0]:+.3f} | {codec_ms[codec] / 2:.3f} |", flush=True)
        print(f"\nwire jpeg encode p50 {enc:.3f} ms, decode p50 {dec:.3f} ms; a round trip encodes and decodes "
              f"twice (task and result); raw frame is {len(raw)} bytes\n")
        print(f"## Job throughput, thread holding each frame 20 ms ({args.throughput_frames} frames of 640x480)\n")
        print("| broker | workers | frames/s |")
        print("| --- | ---: | ---: |")
        for name, url in (("redis", redis.url), ("rabbitmq", rabbit.url)):
            for n in (1, 2, 4):
                fps = throughput(url, redis.url, n, args.throughput_frames)
                print(f"| {name} | {n} | {fps:.1f} |", flush=True)
    finally:
        rabbit.cleanup()
        redis.cleanup()


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
