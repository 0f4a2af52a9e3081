"""Shared helpers for torchvision-style models: first-conv channel change, pretrained weights."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .registry import head_module
from .weights import LoadReport, WeightsError, fetch_hub, is_hub, load_weights


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
        rep = load_weights(model, state, strict=False, source="hub weights", adapt_channels=adapt_channels,
                           head=_head_name(model))
    else:
        rep = load_weights(model, pretrained, strict=False, adapt_channels=adapt_channels, head=_head_name(model))
    check_backbone(model, rep)


def _head_name(model: nn.Module) -> str:
    """The classifier head's module name (``fc``, ``classifier``, ``head.fc``), or "" when none is found."""
    head = head_module(model)
    return next((n for n, m in model.named_modules() if head is not None and m is head), "")


def check_backbone(model: nn.Module, rep: LoadReport) -> None:
    """Pretrained weights must cover the whole backbone: only the classifier head may be missing or of another
    shape (another class count: the new head is kept). A file with backbone tensors missing is the weights of
    another architecture (or a wrong naming) that happen to share a few keys: one WeightsError line, not a
    half-pretrained model. BatchNorm's ``num_batches_tracked`` counters may be absent (timm omits them)."""
    head = _head_name(model)
    missing = [k for k in rep.missing if not (head and k.startswith(f"{head}.")) and not k.endswith("num_batches_tracked")]
    if missing:
        few = ", ".join(missing[:4]) + (f", ... ({len(missing)})" if len(missing) > 4 else "")
        raise WeightsError(f"{rep.source} does not fit {type(model).__name__}: backbone weights missing from it "
                           f"({few}); is it the weight file of another architecture? (--pretrained loads every "
                           "tensor but the classifier head)")
