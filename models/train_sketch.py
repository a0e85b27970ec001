"""Train the Keras sketch network to imitate the classical pencil-sketch filter.

    python models/train_sketch.py             # ~2-4 minutes on 2 CPU cores
    python models/train_sketch.py --steps 50 --out /tmp/w   # a quick smoke run

Data is generated (models/training.py); the teacher is ``styles.sketch_filter``.
Writes ``sketch.weights.h5`` under ``--out`` (default models/weights).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ooblex_models.sketch_net import build_sketch_net
from ooblex_models.styles import sketch_filter
from ooblex_models.training import Images


def batch(images: Images, n: int) -> tuple[np.ndarray, np.ndarray]:
    xs = [images() for _ in range(n)]
    ys = [sketch_filter(x)[:, :, :1] for x in xs]
    return np.stack(xs).astype(np.float32) / 255, np.stack(ys).astype(np.float32) / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    args = ap.parse_args()
    keras.utils.set_random_seed(0)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    net, images = build_sketch_net(), Images(args.size, seed=1)
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, args.steps))
    net.compile(optimizer=opt, loss="mae")
    start = time.time()
    for step in range(1, args.steps + 1):
        loss = net.train_on_batch(*batch(images, args.batch))
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:5d}  L1 {float(loss):.4f}  {time.time() - start:6.1f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    net.save_weights(args.out / "sketch.weights.h5")
    x, y = batch(Images(args.size, seed=321), 32)
    held = float(np.abs(net.predict(x, verbose=0) - y).mean())
    grey = float(np.abs(x.mean(-1, keepdims=True) - y).mean())
    print(f"held-out L1 {held:.4f} (a plain grey copy scores {grey:.4f});"
          f" {net.count_params()} parameters")


if __name__ == "__main__":
    main()
