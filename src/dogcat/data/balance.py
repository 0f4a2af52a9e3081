"""Class imbalance: class counts of a training set, the loss's class weights (``--class-weights``) and a
class-balanced training order (``--sampler=balanced``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import ClassWeights, parse_class_weights
from .images import DataError
from .loader import ResumableSampler
from .multilabel import label_counts, multilabel_weights


def targets(dataset: Any) -> list[int] | None:
    """The labels of a data set in index order (``targets``, as ImageFiles and ArrayImages have them), or
    None for a data set that does not say."""
    ys = getattr(dataset, "targets", None)
    return [int(y) for y in ys] if ys is not None else None


def class_counts(dataset: Any, num_classes: int) -> list[int] | None:
    """Images per class of a data set (None when its labels are unknown)."""
    ys = targets(dataset) if dataset is not None else None
    if ys is None:
        return None
    return torch.bincount(torch.tensor(ys, dtype=torch.long), minlength=num_classes).tolist()


def class_weights(spec: ClassWeights | str, counts: Sequence[int] | None,
                  class_names: Sequence[str]) -> list[float] | None:
    """The loss weights ``--class-weights`` asks for: None for ``none``; for ``auto`` the inverse class
    frequency, normalised as scikit-learn's "balanced" (``N / (C * n_c)``: the mean weight over the training
    images is 1, so the loss keeps its scale and the learning rate its meaning); else the given numbers, one
    per class. A class without images gets weight 0 under ``auto`` (no image of it is ever weighted).
    ``spec``: the option's text (parsed by ``config.parse_class_weights``, the one parser) or its parsed value."""
    spec = parse_class_weights(spec) if isinstance(spec, str) else spec
    if spec == "none":
        return None
    c = len(class_names)
    if spec == "auto":
        if counts is None:
            raise DataError("--class-weights=auto needs the training labels, which this data layout does not give "
                            "(its data set has no `targets`); pass the weights, e.g. --class-weights=1,3")
        n = sum(counts)
        return [n / (c * k) if k else 0.0 for k in counts]
    weights = list(spec)
    if len(weights) != c:
        given = ",".join(f"{w:g}" for w in weights)
        raise DataError(f"--class-weights={given} gives {len(weights)} weight(s) for {c} classes "
                        f"({', '.join(class_names)}): allowed is auto, none, or one weight per class")
    return weights


def loss_weights(spec: ClassWeights | str, dataset: Any, class_names: Sequence[str], multilabel: bool = False
                 ) -> tuple[list[int] | None, list[float] | None]:
    """``(counts, weights)`` of a training set for the loss: images per class and :func:`class_weights`, or for a
    multi-label model images per label and BCE's ``pos_weight`` (``multilabel.multilabel_weights``)."""
    if multilabel:
        ys = targets(dataset)
        counts = label_counts(ys, len(class_names))
        return counts, multilabel_weights(spec, counts, len(ys or []), class_names)
    counts = class_counts(dataset, len(class_names))
    return counts, class_weights(spec, counts, class_names)


class BalancedSampler(ResumableSampler):
    """``--sampler=balanced``: each position draws a class uniformly, then an image of it, i.e. images are drawn
    with replacement with probability 1 / (C' * n_class) (C' = classes that have images), so every class is
    seen about equally often; an epoch is still ``len(dataset)`` draws.

    Only the order differs from :class:`ResumableSampler`: it is a pure function of ``(seed, epoch)`` too (one
    ``torch.multinomial`` on a generator seeded with them), so exact resume, the per-item augmentation seeds
    and DDP sharding (rank r takes positions r, r + world, ...) are the parent's, unchanged."""

    def __init__(self, labels: Sequence[int], seed: int, rank: int = 0, world: int = 1, limit: int = 0) -> None:
        super().__init__(len(labels), seed, shuffle=True, rank=rank, world=world, limit=limit)
        y = torch.tensor(list(labels), dtype=torch.long)
        if not len(y):
            raise DataError("--sampler=balanced: the training set is empty")
        counts = torch.bincount(y).double()
        present = int((counts > 0).sum())
        self.weights = (1.0 / (present * counts[y])).double()  # sums to 1

    def order(self, g: torch.Generator) -> list[int]:
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()


def train_sampler(kind: str, dataset: Any, seed: int, rank: int = 0, world: int = 1, limit: int = 0) -> ResumableSampler:
    """The training order ``--sampler`` names: ``shuffle`` (:class:`ResumableSampler`) or ``balanced``; ``limit``:
    at most that many items a rank takes per epoch (0: all)."""
    if kind != "balanced":
        return ResumableSampler(len(dataset), seed, rank=rank, world=world, limit=limit)
    ys = targets(dataset)
    if ys is None:
        raise DataError("--sampler=balanced needs the training labels, which this data layout does not give "
                        "(its data set has no `targets`); use --sampler=shuffle")
    return BalancedSampler(ys, seed, rank, world, limit)
