"""Model throughput and latency: the raw ceiling against Ooblex's adapters and engine.

    python benchmarks/gpu.py                       # on a CUDA GPU: resnet50 + cartoon, b 1/8/32, fp32/fp16
    python benchmarks/gpu.py --device cpu --frame 160x120 --input 64 --batches 1,4 --streams 4 \\
        --paced-streams 2 --precisions fp32 --seconds 2       # a quick run that proves the script on a CPU

One table per model and precision, one row per path and batch size:

- ``raw, on device``: the model alone on a float batch already on the device (the ceiling);
- ``raw, uint8 upload``: hand-written PyTorch from uint8 frames on the host: upload, resize,
  normalise, model, result back (what the best glue code could do);
- ``adapter``: ``ob.torch.module`` called with a list of frames, no engine;
- ``engine N streams``: the embedded engine, N streams in every-frame mode with 2 frames in
  flight each, as fast as they go (img/s; latency from submit to result).

Then the live case: N streams at 30 fps each (live mode), delivered fps per stream and p99.
resnet50 has random weights (torchvision's definition when it imports, else a local one);
``cartoon`` is the shipped network (models/cartoon_net.py) at the frame size; ``tiny`` is a
probe (pool + linear) that shows what the adapter itself costs; ``noop`` a batched thread that
does nothing, through the engine only: what the engine itself can move. Nothing is
downloaded. Targets (docs/performance.md): engine at batch 32 >= 70 % of the raw ceiling and
>= 5x its batch-1 rate; >= 64 streams of 640x480 at 30 fps with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import ooblex as ob  # noqa: E402
from ooblex import Engine, jpeg  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- models ---------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3), as torchvision builds it."""

    def __init__(self, inp: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(inp, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.down = (nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                     if stride != 1 or inp != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + skip)


def resnet50() -> nn.Module:
    """torchvision's resnet50 (random weights) when torchvision imports, else the same network defined here."""
    try:
        from torchvision.models import resnet50 as tv_resnet50

        return tv_resnet50(weights=None)
    except Exception:  # noqa: BLE001 - torchvision missing, or built for another torch (fails at import)
        pass
    layers: list[nn.Module] = []
    inp = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(inp, planes, stride if i == 0 else 1))
            inp = planes * 4
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def tiny() -> nn.Module:
    """A probe as cheap as a model gets: what is measured is the adapter's own work (upload, resize, normalise)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))


def cartoon() -> nn.Module:
    from ooblex_models.cartoon_net import load_cartoon_net

    return load_cartoon_net()


def top1(logits: np.ndarray, frame: np.ndarray) -> dict[str, int]:
    return {"label": int(logits.argmax())}


# --- measuring ------------------------------------------------------------------------------
def pct(samples: list[float]) -> tuple[float, float]:
    p = np.percentile(np.asarray(samples) * 1e3, [50, 99])
    return round(float(p[0]), 2), round(float(p[1]), 2)


def timed(fn: Callable[[], Any], batch: int, seconds: float, sync: Callable[[], None]) -> tuple[float, float, float]:
    """(img/s, p50 ms, p99 ms) of back-to-back calls of ``fn`` (one batch each), after a short warm-up.

    Run in a thread of its own, as the engine runs a model (the main thread's CPU maths behaved
    differently on a loaded machine).
    """
    def loop() -> tuple[float, float, float]:
        for _ in range(3):
            fn()
        sync()
        lat: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(lat) < 5:
            t = time.perf_counter()
            fn()
            sync()
            lat.append(time.perf_counter() - t)
        return round(batch * len(lat) / (time.perf_counter() - start), 1), *pct(lat)

    with cf.ThreadPoolExecutor(1) as pool:
        return pool.submit(loop).result()


def raw_rows(net: nn.Module, dev: torch.device, dtype: torch.dtype, batch: int, frame: np.ndarray,
             size: tuple[int, int] | None, seconds: float, sync: Callable[[], None],
             channels_last: bool) -> list[tuple[str, tuple]]:
    """The model alone, then the model behind hand-written upload + preprocessing in PyTorch (both in the
    memory order the adapter is given)."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory)
    h, w = (size[1], size[0]) if size else frame.shape[:2]
    mean = torch.tensor(MEAN, device=dev, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev, dtype=dtype).view(1, 3, 1, 1)
    host = torch.from_numpy(np.stack([frame] * batch))
    if dev.type == "cuda":
        host = host.pin_memory()
    x = host.to(dev).permute(0, 3, 1, 2).to(dtype) / 255  # the same pixels as the other paths see
    if size:
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
    x = ((x - mean) / std).contiguous(memory_format=memory)

    @torch.inference_mode()
    def model_only() -> None:
        net(x)

    @torch.inference_mode()
    def from_uint8() -> None:
        t = host.to(dev, non_blocking=True).permute(0, 3, 1, 2).to(dtype)
        if size:
            t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True)
        y = net((((t / 255) - mean) / std).contiguous(memory_format=memory))
        if y.ndim == 4:  # an image: back to uint8 frames on the host
            y = (y.float() * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        y.cpu()

    return [("raw, on device", timed(model_only, batch, seconds, sync)),
            ("raw, uint8 upload", timed(from_uint8, batch, seconds, sync))]


async def engine_saturated(thread: ob.TensorThread, streams: int, frame: np.ndarray, seconds: float
                           ) -> tuple[float, float, float]:
    """N streams in every-frame mode, 2 in flight each, as fast as they go: (img/s, p50, p99 submit->result)."""
    async with Engine(threads=[thread], max_streams=streams) as engine:
        ss = [engine.open(thread.name, mode="every", max_in_flight=2) for _ in range(streams)]
        lat: list[float] = []
        counting = False
        stop = time.perf_counter() + seconds + 1.0

        async def feed(s: Any) -> None:
            while time.perf_counter() < stop:
                await s.submit(frame)

        async def drain(s: Any) -> None:
            while True:
                f = await s.get()
                if counting:
                    lat.append(f.stamps["sent"] - f.stamps["received"])

        async def window() -> tuple[int, float]:
            nonlocal counting
            await asyncio.sleep(1.0)  # warm-up: batches and queues settle
            counting, t = True, time.perf_counter()
            await asyncio.sleep(seconds)
            counting = False
            return len(lat), time.perf_counter() - t

        tasks = [asyncio.create_task(feed(s)) for s in ss] + [asyncio.create_task(drain(s)) for s in ss]
        n, span = await window()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in ss:
            await s.close()
    return round(n / span, 1), *pct(lat or [0.0])


async def engine_paced(thread: ob.TensorThread, streams: int, frame: np.ndarray, seconds: float, fps: float = 30.0
                       ) -> tuple[float, float, float, float]:
    """N live streams at ``fps`` each: (lowest delivered fps of a stream, mean fps, p50, p99 capture->result)."""
    async with Engine(threads=[thread], max_streams=streams) as engine:
        ss = [engine.open(thread.name, mode="live", max_in_flight=2, max_latency_ms=500) for _ in range(streams)]
        counts = [0] * streams
        lat: list[float] = []
        start = time.perf_counter() + 1.0  # warm-up second not counted
        stop = start + seconds

        async def camera(i: int) -> None:
            await asyncio.sleep(i / fps / streams)  # cameras are not in phase
            nxt = time.perf_counter()
            while nxt < stop:
                await ss[i].submit(frame, captured=time.time())
                nxt += 1 / fps
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

        async def viewer(i: int) -> None:
            while True:
                f = await ss[i].get()
                if start <= time.perf_counter() < stop:
                    counts[i] += 1
                    lat.append(time.time() - f.stamps["captured"])

        views = [asyncio.create_task(viewer(i)) for i in range(streams)]
        await asyncio.gather(*(camera(i) for i in range(streams)))
        await asyncio.sleep(0.3)
        for v in views:
            v.cancel()
        await asyncio.gather(*views, return_exceptions=True)
        for s in ss:
            await s.close()
    rates = [c / seconds for c in counts]
    return round(min(rates), 1), round(statistics.mean(rates), 1), *pct(lat or [0.0])


# --- the run --------------------------------------------------------------------------------
def build(kind: str, args: argparse.Namespace, batch: int, half: bool, dev: str) -> tuple[nn.Module, ob.TensorThread]:
    net = {"resnet50": resnet50, "tiny": tiny, "cartoon": cartoon}[kind]()
    options: dict[str, Any] = {"device": dev, "half": half, "batch_size": batch, "max_wait_ms": args.max_wait_ms,
                               "warmup": args.frame_hw}
    if args.accelerate != "none":
        options["accelerate"] = args.accelerate
    if args.concurrency:
        options["concurrency"] = args.concurrency
    if args.channels_last:
        options["channels_last"] = True
    if kind != "cartoon":
        options.update(size=(args.input, args.input), mean=MEAN, std=STD, postprocess=top1)
    return net, ob.torch.module(net, name=f"{kind}_b{batch}", **options)


def noop(batch: int) -> ob.TensorThread:
    """A batched thread that does nothing: through the engine, what the engine itself can move."""

    if batch == 1:
        return ob.tensor_thread(lambda frame: {"label": 0}, name="noop_b1")
    return ob.tensor_thread(lambda frames: [{"label": 0}] * len(frames), name=f"noop_b{batch}",
                            batch_size=batch, max_wait_ms=0)


def run_model(kind: str, args: argparse.Namespace, frame: np.ndarray) -> list[list[Any]]:
    if kind == "noop":
        return [["noop", "-", f"engine {args.streams} streams", b,
                 *asyncio.run(engine_saturated(noop(b), args.streams, frame, args.seconds))] for b in args.batches]
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows: list[list[Any]] = []
    for precision in args.precisions:
        half = precision == "fp16"
        dtype = torch.float16 if half and dev.type == "cuda" else torch.float32
        if half and dev.type != "cuda":
            print(f"  ({kind} fp16 skipped: fp16 is a CUDA option)")
            continue
        for batch in args.batches:
            net, thread = build(kind, args, batch, half, args.device)
            raw_net = (net.to(dev).eval().half() if half else net.to(dev).eval())
            size = None if kind == "cartoon" else (args.input, args.input)
            if "raw" in args.paths:
                for path, (ips, p50, p99) in raw_rows(raw_net, dev, dtype, batch, frame, size, args.seconds, sync,
                                                      args.channels_last):
                    rows.append([kind, precision, path, batch, ips, p50, p99])
            if "adapter" in args.paths:
                frames = [frame.copy() for _ in range(batch)]
                call = (lambda t=thread, f=frames: t(f)) if batch > 1 else (lambda t=thread, f=frames: t(f[0]))
                rows.append([kind, precision, "adapter", batch, *timed(call, batch, args.seconds, sync)])
            if "engine" in args.paths:
                ips, p50, p99 = asyncio.run(engine_saturated(thread, args.streams, frame, args.seconds))
                rows.append([kind, precision, f"engine {args.streams} streams", batch, ips, p50, p99])
            thread.teardown()
            del net, raw_net, thread
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if args.paced_streams:
            _, thread = build(kind, args, max(args.batches), half, args.device)
            low, mean, p50, p99 = asyncio.run(engine_paced(thread, args.paced_streams, frame, args.seconds))
            rows.append([kind, precision, f"live {args.paced_streams} x 30 fps (min/mean fps {low}/{mean})",
                         max(args.batches), round(mean * args.paced_streams, 1), p50, p99,
                         (args.paced_streams, low)])  # not printed: for the verdict
            thread.teardown()
    return rows


def print_table(rows: list[list[Any]]) -> None:
    print("| model | precision | path | batch | img/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r[:7]) + " |")


def print_targets(rows: list[list[Any]]) -> None:
    """The issue's three targets, read off the rows (for each model and precision measured)."""
    by = {(r[0], r[1], r[2].split(" (")[0], r[3]): r for r in rows}
    for kind, precision in sorted({(r[0], r[1]) for r in rows}):
        engine = {b: r[4] for (k, p, path, b), r in by.items() if (k, p) == (kind, precision)
                  and path.startswith("engine")}
        ceiling = {b: r[4] for (k, p, path, b), r in by.items() if (k, p, path) == (kind, precision, "raw, on device")}
        if engine and ceiling:
            b = max(engine)
            share, gain = engine[b] / ceiling[b], engine[b] / engine[min(engine)]
            print(f"{kind} {precision}: engine at batch {b} = {share:.0%} of the raw ceiling (target >= 70%: "
                  f"{verdict(share >= 0.7)}); {gain:.1f}x its batch-{min(engine)} rate (target >= 5x: "
                  f"{verdict(gain >= 5)})")
        for (k, p, path, _), r in by.items():
            if (k, p) == (kind, precision) and path.startswith("live"):
                streams, low = r[7]
                ok = streams >= 64 and low >= 29.5 and r[6] <= 50
                print(f"{kind} {precision}: {r[2]}, p99 {r[6]} ms (target 30 fps each for >= 64 streams at "
                      f"p99 <= 50 ms: {verdict(ok)})")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="noop,tiny,resnet50,cartoon")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--frame", default="640x480", help="frame size WxH (tests/data/one_face.jpg, resized)")
    ap.add_argument("--input", type=int, default=224, help="resnet50 input size (frames are resized to it)")
    ap.add_argument("--streams", type=int, default=32, help="streams for the throughput rows")
    ap.add_argument("--paced-streams", type=int, default=64, help="live 30 fps streams (0: skip)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--accelerate", default="none", choices=("none", "graphs", "compile"))
    ap.add_argument("--concurrency", type=int, default=0, help="batches in flight (0: the adapter's default)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory order for the model (raw rows too)")
    ap.add_argument("--paths", default="raw,adapter,engine", help="which rows to measure")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    w, h = (int(v) for v in args.frame.split("x"))
    args.frame_hw = (h, w)
    photo = torch.from_numpy(jpeg.decode((ROOT / "tests/data/one_face.jpg").read_bytes())).permute(2, 0, 1)[None]
    frame = F.interpolate(photo.float(), size=(h, w), mode="bilinear", antialias=True).round().clamp(0, 255)
    frame = np.ascontiguousarray(frame[0].permute(1, 2, 0).to(torch.uint8).numpy())
    dev = args.device
    torch.set_flush_denormal(True)  # random weights make denormal floats, which crawl on a CPU
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "none (CPU run)"
    print(f"# benchmarks/gpu.py on {platform.node()}: device {dev}, GPU {gpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; frames {w}x{h}; accelerate={args.accelerate}; "
          f"channels_last={args.channels_last}\n")
    rows: list[list[Any]] = []
    for kind in args.models.split(","):
        rows += run_model(kind, args, frame)
    print_table(rows)
    print()
    print_targets(rows)


if __name__ == "__main__":
    main()
