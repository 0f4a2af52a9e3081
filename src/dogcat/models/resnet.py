"""ResNet-18 / ResNet-34 (the template's ResNet34 is the same architecture as torchvision's)."""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, resnet18, resnet34

from .registry import register
from .adapt import load_pretrained, set_in_chans


@register("resnet34", "ResNet-34 (the template's second model)")
def build_resnet34(num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    model = set_in_chans(resnet34(num_classes=num_classes), in_chans)
    load_pretrained(model, pretrained, ResNet34_Weights.DEFAULT)
    return model


@register("resnet18", "ResNet-18 (fast with bf16 + channels_last on AMX CPUs)")
def build_resnet18(num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    model = set_in_chans(resnet18(num_classes=num_classes), in_chans)
    load_pretrained(model, pretrained, ResNet18_Weights.DEFAULT)
    return model
