"""Which parameters ``--freeze`` freezes, and the train mode of a partly frozen model.

``--freeze=backbone``: every parameter but the classifier head's (``registry.head_module``). ``--freeze=N``: the
first N parameter groups of the backbone, in forward order: for timm models timm's own coarse groups
(``group_matcher(coarse=True)``: the stem, then each stage), for others the model's top-level children that
hold parameters (torchvision's ResNet: conv1, bn1, layer1, ..., layer4). The head is never frozen.

Frozen parameters get ``requires_grad=False``. Their BatchNorm layers stay in eval mode while the model trains
(:func:`train_mode`): a frozen layer whose running statistics still moved would not be frozen, and the
pretrained statistics are what its weights were trained with. A norm layer counts as frozen when all its
parameters are.
"""

from __future__ import annotations

from typing import Union

import torch.nn as nn

from .registry import ModelError, head_module

Freeze = Union[str, int]  # "none", "backbone" or N (config.parse_freeze)


def backbone_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """``[(group name, parameters)]`` of the backbone in forward order (the module doc says which groups)."""
    head = head_module(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    if hasattr(model, "group_matcher"):  # timm: its own grouping, the one its layer-wise lr decay uses
        from timm.models import group_parameters

        named = dict(model.named_parameters())
        groups = group_parameters(model, model.group_matcher(coarse=True))
        out = [(f"group {gid}", [named[n] for n in names]) for gid, names in sorted(groups.items())]
    else:
        out = [(name, list(child.parameters())) for name, child in model.named_children()]
    out = [(name, [p for p in ps if id(p) not in head_ids]) for name, ps in out]
    return [(name, ps) for name, ps in out if ps]


def frozen_parameters(model: nn.Module, freeze: Freeze) -> list[nn.Parameter]:
    """The parameters ``freeze`` freezes; a model without a head to keep, or N past its groups, is a ModelError."""
    if freeze == "none":
        return []
    head = head_module(model)
    if head is None:
        raise ModelError(f"--freeze={freeze}: cannot find the classifier head of {type(model).__name__} "
                         "(timm's get_classifier(), or a module named fc, classifier, head)")
    if freeze == "backbone":
        head_ids = {id(p) for p in head.parameters()}
        return [p for p in model.parameters() if id(p) not in head_ids]
    groups = backbone_groups(model)
    if int(freeze) > len(groups):
        raise ModelError(f"--freeze={freeze}: {type(model).__name__} has {len(groups)} backbone groups "
                         f"({', '.join(n for n, _ in groups)}); use N <= {len(groups)} or --freeze=backbone")
    return [p for _, ps in groups[:int(freeze)] for p in ps]


def set_frozen(model: nn.Module, freeze: Freeze, frozen: bool) -> int:
    """Freeze (``frozen``) or unfreeze what ``freeze`` names; returns how many parameters changed."""
    changed = 0
    for p in frozen_parameters(model, freeze):
        if p.requires_grad == frozen:
            p.requires_grad_(not frozen)
            changed += 1
    return changed


def train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, with the BatchNorm layers of frozen parts kept in eval mode (module doc)."""
    model.train(mode)
    if mode:
        for m in model.modules():
            params = list(m.parameters(recurse=False))
            if isinstance(m, nn.modules.batchnorm._NormBase) and params and not any(p.requires_grad for p in params):
                m.eval()
    return model
