"""A small VGG-style CNN for 28x28 and other small images (the Fashion-MNIST demo's model)."""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv-conv-pool, conv-conv-pool, conv, global average pool, dropout, linear."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_chans, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("smallcnn", "small CNN for 28x28 / small images (Fashion-MNIST demo)")
def smallcnn(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> nn.Module:
    model = SmallCNN(num_classes, in_chans)
    if pretrained:
        from .weights import load_weights

        load_weights(model, pretrained, strict=False)
    return model
