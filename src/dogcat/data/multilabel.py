"""Multi-label data: several labels per image, read from a list file (``--task=multilabel``).

An image's label set travels through datasets, caches, samplers and loaders as one integer, bit ``i`` set
for label ``i`` (:func:`encode`): everything that carries a class index carries it unchanged, and
:func:`multi_hot` turns a batch of them into the 0/1 targets of ``BCEWithLogitsLoss`` on the device. Hence at
most :data:`~dogcat.preprocess.MAX_LABELS` labels (63: bit 63 would make the int64 negative, which means
"unknown label" everywhere).

A list file gives the labels in one of two ways (CSV, or ``path labels`` lines):

- one column (``--label-column``, default ``label``, else ``labels``) holding the labels separated by
  ``--label-sep`` (default ``;``, ``space`` for whitespace): ``img/1.jpg,cat;sofa``. The label names are the
  distinct names of the training list, sorted (integers numerically). An empty cell is refused: it is more
  often a slip than a meaning; an image with none of the labels is written with 0/1 columns;
- one 0/1 column per label (``--label-columns=sky,water`` or ``*`` for every column but the path): the labels
  are those columns, in the order given; a row of zeros is an image with none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import ClassWeights, DataConfig, parse_class_weights
from ..preprocess import MAX_LABELS
from .images import DataError

TRUE, FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no", "-1"}  # -1: the VOC style of "absent"


@dataclass(frozen=True)
class Columns:
    """Where a multi-label list file keeps its paths and labels (the ``--path-column`` ... options)."""

    path: str = "path"
    label: str = "label"
    labels: tuple[str, ...] | None = None  # 0/1 columns; ("*",): every column but the path
    sep: str | None = ";"  # None: whitespace

    @classmethod
    def of(cls, cfg: DataConfig) -> Columns:
        spec = cfg.label_columns
        labels = tuple(c.strip() for c in spec.split(",") if c.strip()) if spec else None
        if spec is not None and not labels:
            raise DataError(f"--label-columns={spec!r} names no column: give them comma-separated, or *")
        if cfg.label_sep == "":
            raise DataError("--label-sep='' is not allowed: give the character between labels, or 'space'")
        return cls(cfg.path_column, cfg.label_column, labels, None if cfg.label_sep == "space" else cfg.label_sep)


def split_labels(cell: str, sep: str | None) -> list[str]:
    """The label names of one cell, stripped, empty ones dropped, each once (in order)."""
    return list(dict.fromkeys(t.strip() for t in cell.split(sep) if t.strip()))


def flag(value: str, where: str) -> bool:
    """A 0/1 cell as a bool, or a DataError naming where it is."""
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise DataError(f"{where}: {value!r} is not 0 or 1 (a 0/1 label column; also true/false, yes/no)")


def check_names(names: Sequence[str], source: str) -> None:
    """A multi-label model needs 2 to MAX_LABELS labels."""
    if len(names) > MAX_LABELS:
        raise DataError(f"{source}: {len(names)} labels, more than the {MAX_LABELS} a multi-label model may have "
                        f"(each image's labels travel as one 64-bit mask)")
    if len(names) < 2:
        raise DataError(f"{source}: {len(names)} label(s) {list(names)}; a multi-label model needs at least 2")


def encode(indices: Sequence[int]) -> int:
    """A label set as the integer the loaders carry: bit i for label i."""
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def multi_hot(labels: torch.Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N,)`` int64 bit masks -> ``(N, num_labels)`` 0/1 targets, on the labels' device."""
    bits = torch.arange(num_labels, device=labels.device)
    return ((labels[:, None] >> bits) & 1).to(dtype)


def label_counts(ys: Sequence[int] | None, num_labels: int) -> list[int] | None:
    """Images with each label, from the masks of a data set (None when its labels are unknown)."""
    if ys is None:
        return None
    return [sum(1 for y in ys if y >= 0 and y >> i & 1) for i in range(num_labels)]


def pos_weights(counts: Sequence[int], total: int) -> list[float]:
    """``--class-weights=auto`` for multi-label: each label's ``pos_weight`` of ``BCEWithLogitsLoss``, the ratio
    of its negatives to its positives (PyTorch's documented choice), so that a rare label's few positives weigh
    as much as its many negatives. A label no training image has gets 1 (nothing to weigh)."""
    return [(total - k) / k if k else 1.0 for k in counts]


def multilabel_weights(spec: ClassWeights | str, counts: Sequence[int] | None, total: int,
                       names: Sequence[str]) -> list[float] | None:
    """``--class-weights`` of a multi-label model, as BCE's ``pos_weight``: None for ``none``, :func:`pos_weights`
    for ``auto``, else the given numbers, one per label."""
    spec = parse_class_weights(spec) if isinstance(spec, str) else spec
    if spec == "none":
        return None
    if spec == "auto":
        if counts is None:
            raise DataError("--class-weights=auto needs the training labels, which this data set does not give")
        return pos_weights(counts, total)
    if len(spec) != len(names):
        raise DataError(f"--class-weights={','.join(f'{w:g}' for w in spec)} gives {len(spec)} weight(s) for "
                        f"{len(names)} labels ({', '.join(names)}): allowed is auto, none, or one pos_weight per label")
    return list(spec)
