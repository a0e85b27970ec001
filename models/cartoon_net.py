"""``CartoonNet``: a 19k-parameter CNN that imitates ``styles.cartoon_filter`` (see train_cartoon.py).

Works at half resolution internally (cheap on a CPU) with a full-resolution skip so outlines
stay sharp. Input and output: float NCHW RGB in 0..1, any size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS = Path(__file__).parent / "weights" / "cartoon.pt"
ONNX = Path(__file__).parent / "weights" / "cartoon.onnx"


class CartoonNet(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU())
        self.merge = nn.Conv2d(2 * width, width, 1)
        self.head = nn.Conv2d(width, 3 + 4, 3, padding=1)  # colour + features for the outline gate
        self.edge = nn.Conv2d(3 + 4 + 1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        half = F.avg_pool2d(x, 2, ceil_mode=True)
        e = F.relu(self.enc(half))
        m = self.mid(F.relu(self.down(e)))
        m = F.interpolate(m, size=e.shape[-2:], mode="bilinear", align_corners=False)
        f = F.relu(self.merge(torch.cat([e, m], 1)))
        up = F.interpolate(self.head(f), size=(h, w), mode="bilinear", align_corners=False)
        # outlines need full resolution: a gate from the input pixels, the upsampled outline features and a
        # fixed local-contrast map (grey minus its 9x9 mean: what the teacher's adaptive threshold looks at)
        grey = x.mean(1, keepdim=True)
        contrast = 20 * (grey - F.avg_pool2d(grey, 9, stride=1, padding=4, count_include_pad=False))
        gate = torch.sigmoid(self.edge(torch.cat([x, up[:, 3:], contrast], 1)) + 3.0)
        return torch.sigmoid(up[:, :3]) * gate


def load_cartoon_net() -> CartoonNet:
    """The committed, trained network (CPU tensors; the adapter moves it to the chosen device)."""
    net = CartoonNet()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()
