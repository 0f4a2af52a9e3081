"""Shared helpers for torchvision-style models: first-conv channel change, pretrained weights."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .weights import WeightsError, fetch_hub, is_hub, load_weights


def set_in_chans(model: nn.Module, in_chans: int) -> nn.Module:
    """Replace the first 3-channel ``Conv2d`` by one taking ``in_chans`` (e.g. 1 for Fashion-MNIST)."""
    if in_chans == 3:
        return model
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(in_chans, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
                setattr(parent, name, new)
                return model
    raise ValueError(f"{type(model).__name__}: no 3-channel first convolution to adapt to {in_chans} channels")


def load_pretrained(model: nn.Module, pretrained: str | None, hub_weights: Any = None,
                    adapt_channels: bool = True) -> None:
    """Load backbone weights from a local file, or from the hub (``pretrained='hub'``: ``hub_weights``, a
    torchvision ``Weights`` entry), keeping the new head.

    Shape-mismatched keys (the head for another class count) are skipped; with ``adapt_channels`` a 3-channel
    first conv is summed over its input channels when the model takes another channel count (as timm does).
    A model without hub weights, or a download that fails (offline), is one WeightsError line.
    """
    if not pretrained:
        return
    if is_hub(pretrained):
        if hub_weights is None:
            raise WeightsError(f"--pretrained={pretrained}: {type(model).__name__} has no published (hub) weights; "
                               "pass a local weight file, --pretrained=FILE")
        state = fetch_hub(f"{type(model).__name__} ({hub_weights})", hub_weights.url,
                          lambda: hub_weights.get_state_dict(progress=True))
        load_weights(model, state, strict=False, source="hub weights", adapt_channels=adapt_channels)
    else:
        load_weights(model, pretrained, strict=False, adapt_channels=adapt_channels)
