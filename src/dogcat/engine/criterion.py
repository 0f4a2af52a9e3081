"""The training loss: cross-entropy with label smoothing, mixup / cutmix (timm's ``Mixup``, soft targets) and
class weights, as one :class:`Criterion`."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import Config


class Criterion:
    """``criterion(images, labels) -> (images, targets)`` then ``criterion.loss(logits, targets)``.

    With mixup or cutmix, timm's ``Mixup`` mixes the batch and makes soft (smoothed) targets, scored by
    soft-target cross-entropy; it draws from numpy's global RNG, which checkpoints carry, so resume stays
    exact. An odd-sized batch (a last one) is not mixed: its targets are only smoothed.

    ``weight`` (``--class-weights``): per-class weights of the loss, as ``F.cross_entropy(weight=...)`` takes
    them: a weighted mean, each image weighing its class's weight. Soft targets get the same rule: an image's
    loss term and its share of the denominator are weighted by its target's weighted mass sum_c t_c w_c."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, weight: Sequence[float] | None = None) -> None:
        self.num_classes, self.smoothing = num_classes, label_smoothing
        self.weight = torch.tensor(list(weight), dtype=torch.float32) if weight is not None else None
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                                  num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup_fn is None:
            return images, labels
        if len(images) % 2 == 0:
            return self.mixup_fn(images.clone(), labels)  # it mixes in place: never into a loader's tensor
        from timm.data.mixup import one_hot

        off = self.smoothing / self.num_classes
        return images, one_hot(labels, self.num_classes, on_value=1.0 - self.smoothing + off, off_value=off)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = None
        if self.weight is not None:
            if self.weight.device != logits.device:  # moved once, not every step
                self.weight = self.weight.to(logits.device)
            w = self.weight
        if targets.dtype.is_floating_point:  # soft targets (timm's SoftTargetCrossEntropy)
            terms = -targets * F.log_softmax(logits.float(), dim=-1)
            if w is None:
                return terms.sum(-1).mean()
            # as cross_entropy's weighted mean: sum_i sum_c w_c t_ic (-log p_ic) / sum_i w_(y_i), where an image's
            # class weight w_(y_i) is, for a soft target, the weight of its (mixed, smoothed) label: sum_c w_c t_ic
            return (terms * w).sum() / (targets * w).sum().clamp_min(1e-12)
        if w is not None:  # a float32 weight needs float32 logits (bf16 ones outside an autocast region)
            logits = logits.float()
        return F.cross_entropy(logits, targets, weight=w, label_smoothing=self.smoothing)


def build_criterion(cfg: Config, num_classes: int, weight: Sequence[float] | None = None) -> Criterion:
    """The training loss of ``cfg``; ``weight``: the class weights ``--class-weights`` resolved to (or None)."""
    o = cfg.optim
    return Criterion(num_classes, o.label_smoothing, o.mixup, o.cutmix, weight)
