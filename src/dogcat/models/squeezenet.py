"""SqueezeNet 1.1, as in the template: torchvision's network with a new 1x1-conv classifier."""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

from .registry import register
from .adapt import load_pretrained, set_in_chans


@register("squeezenet", "SqueezeNet 1.1 (the template's default; fine-tune with --pretrained and --freeze-backbone)")
def squeezenet(num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    model = set_in_chans(squeezenet1_1(num_classes=num_classes), in_chans)
    load_pretrained(model, pretrained, SqueezeNet1_1_Weights.DEFAULT)
    return model
