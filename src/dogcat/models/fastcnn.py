"""A fast CNN for small images (the Fashion-MNIST recipes' models), shaped after airbench's CIFAR-10 net.

Layout: a 3x3 stem at full resolution, then blocks of conv -> 2x2 max pool -> BatchNorm -> ReLU -> conv ->
BatchNorm -> ReLU, then the maximum over the remaining grid and a linear layer. Pooling right after the first
conv of a block (airbench's order) runs that BatchNorm and ReLU on a quarter of the pixels: on the project's
2-core CPU the 16-32-64 net trains 1.3x (bf16) to 1.9x (fp32) faster than ``smallcnn`` (conv-BN-ReLU at full
resolution, then pool) at about the same FLOPs, and reached higher test accuracy per epoch (docs/speed.md).
Widths are multiples of 16: oneDNN's CPU kernels ran a 24-48-96 net slower than a 32-64-128 one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .adapt import load_pretrained
from .registry import register


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class Block(nn.Sequential):
    """conv, 2x2 max pool, BN, ReLU, conv, BN, ReLU: halves the side."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv(cin, cout), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         _conv(cout, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastCNN(nn.Module):
    """Stem, ``len(widths)`` blocks (each halves the side: 28 -> 14 -> 7 -> 3), global max pool, linear.
    Any input of at least 2**len(widths) pixels a side works (the tests train it on 32 px photos)."""

    def __init__(self, num_classes: int, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                 stem: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(in_chans, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        cin = stem
        for w in widths:
            layers.append(Block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.features(x), dim=(2, 3)))  # global max pool


def _build(widths: Sequence[int], num_classes: int, in_chans: int, pretrained: str | None) -> nn.Module:
    model = FastCNN(num_classes, in_chans, widths)
    load_pretrained(model, pretrained, adapt_channels=False)  # a local file; it has no hub weights
    return model


@register("fastcnn", "fast small-image CNN, widths 16-32-64 (the Fashion-MNIST demo's model)")
def fastcnn(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> nn.Module:
    return _build((16, 32, 64), num_classes, in_chans, pretrained)


@register("fastcnn-wide", "fastcnn with widths 32-64-128 (the 94 % Fashion-MNIST recipe's model)")
def fastcnn_wide(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> nn.Module:
    return _build((32, 64, 128), num_classes, in_chans, pretrained)
