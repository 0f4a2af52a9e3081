"""The training loss: cross-entropy with label smoothing, mixup / cutmix (timm's ``Mixup``, soft targets) and
class weights, as one :class:`Criterion`; for a multi-label model (``--task=multilabel``) binary cross-entropy
of a sigmoid per label (``BCEWithLogitsLoss``), with ``--class-weights`` as its ``pos_weight``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..data.multilabel import multi_hot


class Criterion:
    """``criterion(images, labels) -> (images, targets)`` then ``criterion.loss(logits, targets)``.

    With mixup or cutmix, timm's ``Mixup`` mixes the batch and makes soft (smoothed) targets, scored by
    soft-target cross-entropy; it draws from numpy's global RNG, which checkpoints carry, so resume stays
    exact. An odd-sized batch (a last one) is not mixed: its targets are only smoothed.

    ``weight`` (``--class-weights``): per-class weights of the loss, as ``F.cross_entropy(weight=...)`` takes
    them: a weighted mean, each image weighing its class's weight. Soft targets get the same rule: an image's
    loss term and its share of the denominator are weighted by its target's weighted mass sum_c t_c w_c.

    ``multilabel``: labels are bit masks (``data/multilabel.py``), the loss is ``binary_cross_entropy_with_logits``
    averaged over images and labels, and ``weight`` is its ``pos_weight`` (per label: how much a positive weighs
    against a negative). Mixup, cutmix and label smoothing are refused for it (:func:`check_multilabel`)."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, weight: Sequence[float] | None = None, multilabel: bool = False) -> None:
        self.num_classes, self.smoothing, self.multilabel = num_classes, label_smoothing, multilabel
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
        if self.multilabel:
            hot = multi_hot(targets, self.num_classes) if not targets.dtype.is_floating_point else targets
            return F.binary_cross_entropy_with_logits(logits.float(), hot, pos_weight=w)
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


def check_multilabel(cfg: Config) -> None:
    """Options a multi-label model cannot train with: one ConfigError line, before a run folder exists. Mixup,
    cutmix and label smoothing are about one class per image (timm's Mixup mixes one-hot targets); mixing
    multi-label targets is possible but another experiment than the one these options name, so they are
    refused rather than reinterpreted."""
    o = cfg.optim
    for key, value in (("mixup", o.mixup), ("cutmix", o.cutmix), ("label_smoothing", o.label_smoothing)):
        if value:
            raise ConfigError(f"option --{key.replace('_', '-')}={value:g} is not allowed with --task=multilabel: "
                              "it assumes one class per image; allowed is 0")
    if cfg.data.sampler != "shuffle":
        raise ConfigError(f"option --sampler={cfg.data.sampler} is not allowed with --task=multilabel: it balances "
                          "single classes; allowed is shuffle")


def build_criterion(cfg: Config, num_classes: int, weight: Sequence[float] | None = None) -> Criterion:
    """The training loss of ``cfg``; ``weight``: the class weights ``--class-weights`` resolved to (or None)."""
    o = cfg.optim
    return Criterion(num_classes, o.label_smoothing, o.mixup, o.cutmix, weight, cfg.data.task == "multilabel")
