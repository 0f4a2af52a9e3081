"""Test-time augmentation: the horizontal flip, written once for validation, ``test``, ``predict`` and exports."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn


class FlipTTA(nn.Module):
    """Log of the mean of the probabilities of ``x`` and its horizontal flip, from any model: a module, or a
    callable such as an exported model's runner.

    Log-probabilities, not probabilities, so that code that applies softmax / log-softmax to "logits"
    (validation metrics, ``test``, ``predict``) gets exactly the averaged probabilities. ``multilabel``: the
    mean of each label's sigmoid, returned as its logit (what a sigmoid turns back into that mean)."""

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor], multilabel: bool = False) -> None:
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            p = (self.model(x).float().sigmoid() + self.model(x.flip(-1)).float().sigmoid()) / 2
            return torch.logit(p.double(), eps=1e-15).float()
        a = self.model(x).float().log_softmax(1)
        b = self.model(x.flip(-1)).float().log_softmax(1)
        return torch.logaddexp(a, b) - math.log(2)


def with_tta(model: nn.Module, tta: bool, multilabel: bool = False) -> nn.Module:
    return FlipTTA(model, multilabel) if tta else model
