"""Latency the embedded engine adds per frame, and what JPEG encode/decode cost, at 640x480.

    python benchmarks/engine_overhead.py [--frames 2000]

Prints two tables. "added" is the time from ``stream.submit`` to ``stream.get`` returning the
processed frame, with the ``identity`` thread (so user code costs ~0); compared with a bare
``run_in_executor`` hop, the least any design that keeps user code off the event loop pays.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import platform
import time

import numpy as np

from ooblex import Engine

W, H = 640, 480


def pct(samples: list[float]) -> tuple[float, float, float]:
    p = np.percentile(np.asarray(samples) * 1e3, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


async def bare_hop(n: int, img: np.ndarray) -> list[float]:
    loop = asyncio.get_running_loop()
    pool = cf.ThreadPoolExecutor(1)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await loop.run_in_executor(pool, lambda: img)
        out.append(time.perf_counter() - t)
    pool.shutdown()
    return out


async def engine_sequential(n: int, img: np.ndarray, mode: str) -> list[float]:
    async with Engine() as engine:
        stream = engine.open("identity", mode=mode, max_in_flight=1)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await stream.submit(img)
            await stream.get()
            out.append(time.perf_counter() - t)
    return out


async def engine_paced(n: int, img: np.ndarray, fps: float) -> list[float]:
    """Live mode at a camera's pace: submit every 1/fps, measure each output's received->get."""
    async with Engine() as engine:
        stream = engine.open("identity", mode="live")
        out = []
        for _ in range(n):
            frame = await stream.submit(img)
            got = await stream.get()
            assert got is frame
            out.append(got.stamps["sent"] - got.stamps["received"])
            await asyncio.sleep(1 / fps)
    return out


def jpeg_rows(img: np.ndarray, n: int) -> list[tuple[str, float, float, int]]:
    rows = []
    import simplejpeg

    enc = simplejpeg.encode_jpeg(img, quality=80, colorspace="RGB", colorsubsampling="420")
    rows.append(("simplejpeg 4:2:0 (default)",
                 timeit(lambda: simplejpeg.encode_jpeg(img, 80, "RGB", "420"), n),
                 timeit(lambda: simplejpeg.decode_jpeg(enc, "RGB", fastdct=True, fastupsample=True), n),
                 len(enc)))
    enc444 = simplejpeg.encode_jpeg(img, quality=80, colorspace="RGB", colorsubsampling="444")
    rows.append(("simplejpeg 4:4:4", timeit(lambda: simplejpeg.encode_jpeg(img, 80, "RGB", "444"), n),
                 timeit(lambda: simplejpeg.decode_jpeg(enc444, "RGB"), n), len(enc444)))
    try:
        from turbojpeg import TJPF_RGB, TJSAMP_420, TurboJPEG

        tj = TurboJPEG()
        tenc = tj.encode(img, quality=80, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)
        rows.append(("PyTurboJPEG 4:2:0", timeit(lambda: tj.encode(img, 80, TJPF_RGB, TJSAMP_420), n),
                     timeit(lambda: tj.decode(tenc, pixel_format=TJPF_RGB), n), len(tenc)))
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"(PyTurboJPEG unavailable: {exc})")
    import cv2

    bgr = np.ascontiguousarray(img[:, :, ::-1])
    ok, cenc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv_encode = lambda: cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])  # noqa: E731
    rows.append(("OpenCV imencode/imdecode", timeit(cv_encode, n),
                 timeit(lambda: cv2.imdecode(cenc, cv2.IMREAD_COLOR), n), len(cenc)))
    return rows


def timeit(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def test_image() -> np.ndarray:
    """A camera-like picture: smooth gradients plus noise, so JPEG sizes and costs are realistic."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 255 / W, y * 255 / H, (x + y) * 127 / (W + H)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000)
    args = ap.parse_args()
    img = test_image()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores\n")
    print(f"Engine overhead, identity thread, {W}x{H}, {args.frames} frames (ms)")
    print(f"{'path':46} {'p50':>7} {'p95':>7} {'p99':>7}")
    rows = [
        ("bare run_in_executor hop (reference)", asyncio.run(bare_hop(args.frames, img))),
        ("engine, every-frame, 1 in flight", asyncio.run(engine_sequential(args.frames, img, "every"))),
        ("engine, live, 1 in flight", asyncio.run(engine_sequential(args.frames, img, "live"))),
        ("engine, live, paced at 30 fps", asyncio.run(engine_paced(min(args.frames, 300), img, 30))),
    ]
    for name, samples in rows:
        print(f"{name:46} {pct(samples)[0]:7.3f} {pct(samples)[1]:7.3f} {pct(samples)[2]:7.3f}")
    print(f"\nJPEG at {W}x{H}, quality 80 (ms per image)")
    print(f"{'codec':30} {'encode':>8} {'decode':>8} {'bytes':>8}")
    for name, enc, dec, size in jpeg_rows(img, 200):
        print(f"{name:30} {enc:8.3f} {dec:8.3f} {size:8d}")


if __name__ == "__main__":
    main()
