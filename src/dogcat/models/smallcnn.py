"""A small VGG-style CNN for 28x28 and other small images (the Fashion-MNIST demo's model)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapt import load_pretrained
from .registry import register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GridMaxPool(nn.Module):
    """Max over an n x n grid of windows, for any input size: ``F.max_pool2d`` with window = stride =
    ceil(side / n) and ``ceil_mode`` (7 -> 3 takes rows 0-2, 3-5, 6). Unlike ``nn.AdaptiveMaxPool2d`` it exports
    to ONNX at sizes n does not divide; the window is computed from the input's (static) size."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if h < 2 * self.n or w < 2 * self.n:  # windows of one pixel could leave fewer than n cells
            return F.adaptive_max_pool2d(x, self.n)
        kh, kw = -(-h // self.n), -(-w // self.n)
        return F.max_pool2d(x, (kh, kw), (kh, kw), ceil_mode=True)


class SmallCNN(nn.Module):
    """conv-conv-pool, conv-conv-pool, conv, a 3x3 grid max pool, dropout, linear.

    Why this shape (measured on Fashion-MNIST on the project's 2-core CPU, bench/train.py (c)): width 16 runs
    a training step 2.3x faster than width 24 here (2,750 against 1,200 img/s; oneDNN's kernels suit 16/32/64
    channels), so 10 epochs fit in the 5 minutes where width 24 fit 5; and keeping a 3x3 grid of the last
    features instead of a global average lets the linear layer see where things are (a sleeve, a heel) at
    almost no cost. The earlier width-24 global-average model reached 91.4 % test accuracy in 3 epochs;
    this one 93.5 % in 12 (see docs/speed.md for the recipe's figures).
    The grid pool keeps the model usable at any input size (the tests train it on 32 px photos)."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        w, grid = width, GridMaxPool(3)
        self.features = nn.Sequential(
            _block(in_chans, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), grid, nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w * grid.n ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("smallcnn", "small CNN for 28x28 / small images (Fashion-MNIST demo)")
def smallcnn(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> nn.Module:
    model = SmallCNN(num_classes, in_chans)
    load_pretrained(model, pretrained, adapt_channels=False)  # a local file; it has no hub weights
    return model
