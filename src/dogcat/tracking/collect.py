"""Per-sample validation results, collected cheaply while ``validate`` runs.

``validate`` computes aggregates only; TensorBoard's PR curve, its misclassified images and the report's
"most confidently wrong" grid need a little more: every sample's label and class probabilities (capped in
size) and the images of the worst mistakes (a bounded heap, so memory does not grow with the data set).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..models.calibration import reliability_bins


@dataclass
class Mistake:
    """A misclassified sample: its id, true and predicted class, probabilities and (normalised) image."""

    id: str
    label: int
    pred: int
    confidence: float  # probability of the (wrong) predicted class
    probs: list[float]
    image: torch.Tensor  # CHW float, as the model saw it (normalised)


@dataclass
class Collector:
    """Pass to ``validate(..., collect=...)``; afterwards holds labels, probabilities and the top mistakes."""

    num_classes: int
    keep_images: int = 16
    max_values: int = 4_000_000  # probabilities kept at most (N x C floats): 16 MB, whatever the data set
    ids: list[str] = field(default_factory=list)
    _labels: list[torch.Tensor] = field(default_factory=list)
    _probs: list[torch.Tensor] = field(default_factory=list)
    _heap: list[tuple[float, int, Mistake]] = field(default_factory=list)
    _count: itertools.count = field(default_factory=itertools.count)
    truncated: bool = False  # more samples than max_values allowed: probs covers a prefix only
    # the temperature the logits were divided by (val with a calibrated model): the report's reliability diagram
    # also shows the raw model's, softmax(logits * T), exactly (logits / T * T), whatever the data set's size
    temperature: float = 1.0
    reliability: torch.Tensor | None = None
    raw_reliability: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, ids: Sequence[str], images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """One batch; ``logits`` may be log-probabilities (TTA), softmax gives the same probabilities."""
        probs = logits.detach().float().softmax(1).cpu()
        labels = labels.detach().cpu()
        self._labels.append(labels)
        bins = reliability_bins(probs, labels)
        self.reliability = bins if self.reliability is None else self.reliability + bins
        if self.temperature != 1.0:
            raw = reliability_bins((logits.detach().double() * self.temperature).softmax(1), labels)
            self.raw_reliability = raw if self.raw_reliability is None else self.raw_reliability + raw
        if (len(self.ids) + len(ids)) * self.num_classes <= self.max_values:
            self._probs.append(probs)
        else:
            self.truncated = True
        self.ids += list(ids)
        conf, pred = probs.max(1)
        wrong = (pred != labels).nonzero().flatten()
        if not len(wrong) or not self.keep_images:
            return
        # only the batch's own top-k can enter the heap: copy those images, not every mistake's
        top = wrong[conf[wrong].argsort(descending=True)[: self.keep_images]]
        for i in top.tolist():
            c = float(conf[i])
            if len(self._heap) < self.keep_images or c > self._heap[0][0]:
                m = Mistake(str(ids[i]), int(labels[i]), int(pred[i]), c, probs[i].tolist(),
                            images[i].detach().float().cpu().clone())
                item = (c, next(self._count), m)
                if len(self._heap) < self.keep_images:
                    heapq.heappush(self._heap, item)
                else:
                    heapq.heapreplace(self._heap, item)

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat(self._labels) if self._labels else torch.empty(0, dtype=torch.long)

    @property
    def probs(self) -> torch.Tensor:
        """(N, C) probabilities, or the first samples' only when ``truncated``."""
        return torch.cat(self._probs) if self._probs else torch.empty(0, self.num_classes)

    def mistakes(self) -> list[Mistake]:
        """The most confidently wrong samples, worst first."""
        return [m for _, _, m in sorted(self._heap, key=lambda t: (-t[0], t[1]))]


def positive_class(class_names: list[str]) -> int:
    """The class a binary PR curve is drawn for: "dog" when present (Kaggle's label), else class 1."""
    return class_names.index("dog") if "dog" in class_names else 1
