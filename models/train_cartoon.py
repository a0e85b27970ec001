"""Train ``CartoonNet`` to imitate the classical cartoon filter, then export it to ONNX.

    python models/train_cartoon.py            # ~3-5 minutes on 2 CPU cores
    python models/train_cartoon.py --steps 200 --out /tmp/w   # a quick smoke run

Data is generated (procedural scenes + crops of the shipped public-domain photos, see
models/training.py); the teacher is ``styles.cartoon_filter``. Writes ``cartoon.pt`` (state dict)
and ``cartoon.onnx`` (dynamic batch/height/width) under ``--out`` (default models/weights).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ooblex_models.cartoon_net import CartoonNet
from ooblex_models.styles import cartoon_filter
from ooblex_models.training import Images


def batch(images: Images, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs = [images() for _ in range(n)]
    ys = [cartoon_filter(x) for x in xs]
    to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return to(xs), to(ys)


def export_onnx(net: CartoonNet, path: Path) -> None:
    torch.onnx.export(net, (torch.zeros(1, 3, 96, 128),), str(path), dynamo=False, input_names=["image"],
                      output_names=["cartoon"], opset_version=17,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "cartoon": {0: "n", 2: "h", 3: "w"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net, images = CartoonNet(), Images(args.size, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        x, y = batch(images, args.batch)
        loss = F.l1_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:5d}  L1 {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    net.eval()
    torch.save(net.state_dict(), args.out / "cartoon.pt")
    export_onnx(net, args.out / "cartoon.onnx")
    with torch.no_grad():
        x, y = batch(Images(args.size, seed=123), 32)
        print(f"held-out L1 {F.l1_loss(net(x), y).item():.4f} (copying the input scores "
              f"{F.l1_loss(x, y).item():.4f}); {sum(p.numel() for p in net.parameters())} parameters")


if __name__ == "__main__":
    main()
