"""Meters: the sums a validation pass accumulates (``EvalMeter``) and the training loss sums (``LossMeter``).

What is computed from the sums is the metrics table's business (``dogcat/metrics.py``); these classes only
count, on the CPU in float64 for validation (in float32 1 - 1e-15 == 1, and a confident mistake would cost
log(0) = inf), on the device for the training loss (a ``.item()`` per step would sync a GPU).

Everything :class:`EvalMeter` keeps is a count or a sum, never a list of per-image scores, so that DDP's
reduction is one ``all_reduce`` of a fixed-size tensor (as for the confusion matrix) and the result is the
same for any number of processes and any order of the images. ROC-AUC needs more than a confusion matrix:
it ranks every positive against every negative. Gathering all scores would make the reduction grow with the
data set (and depend on an all_gather of ragged lists); instead each image adds one to a fixed-bin
histogram of the positive class's log-odds per label (``metrics.AUC_BINS`` bins over
``[-AUC_RANGE, AUC_RANGE]``). The AUC of the histograms counts two images in one bin as a tie (1/2): with
bins 0.01 wide in log-odds this differs from the exact AUC only for pairs scored within 0.01 of each other.
Log-odds, not probabilities: a confident model puts most images within 1e-4 of 0 or 1, where bins of a
probability would tie them all.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.multilabel import multi_hot
from ..metrics import AUC_BINS, AUC_RANGE, ECE_BINS, TOP_K, LabelTally, Tally, compute, per_label_named
from ..models.calibration import reliability_bins
from . import distributed
from .distributed import Dist

EPS = 1e-15  # Kaggle's clipping for log loss


class EvalMeter:
    """Accumulates a validation pass's sums; ``compute()`` returns every metric of the table, the count and the
    confusion matrix, as plain numbers (JSON-safe)."""

    def __init__(self, num_classes: int) -> None:
        self.c = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.loss_sum = 0.0
        self.logloss_sum = 0.0
        self.n = 0
        self.topk = torch.zeros((), dtype=torch.long) if num_classes > TOP_K else None
        self.hist = torch.zeros(2, AUC_BINS, dtype=torch.long) if num_classes == 2 else None
        self.rel = torch.zeros(3, ECE_BINS, dtype=torch.float64)  # for the ECE: fixed size, summed like the rest

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # float64: in float32 1 - 1e-15 == 1, and a confident mistake would cost log(0) = inf
        logits, labels = logits.double().cpu(), labels.cpu()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        probs = logits.softmax(1)
        if self.c == 2:  # Kaggle Redux: clip p(dog), binary cross-entropy
            p = probs[:, 1].clamp(EPS, 1 - EPS)
            ll = -(labels * p.log() + (1 - labels) * (1 - p).log())
        else:  # multi-class log loss, clipped and renormalised (as scikit-learn)
            p = probs.clamp(EPS, 1 - EPS)
            p = p / p.sum(1, keepdim=True)
            ll = -p.gather(1, labels[:, None]).squeeze(1).log()
        self.logloss_sum += ll.sum().item()
        preds = probs.argmax(1)
        self.rel += reliability_bins(probs, labels)
        self.cm += torch.bincount(labels * self.c + preds, minlength=self.c * self.c).view(self.c, self.c)
        self.n += len(labels)
        if self.topk is not None:
            self.topk += (logits.topk(TOP_K, 1).indices == labels[:, None]).any(1).sum()
        if self.hist is not None:  # log-odds of class 1 (softmax-invariant: TTA's log-probabilities give the same)
            odds = (logits[:, 1] - logits[:, 0]).nan_to_num(0.0)
            b = ((odds + AUC_RANGE) * (AUC_BINS / (2 * AUC_RANGE))).floor().clamp(0, AUC_BINS - 1).long()
            self.hist += torch.bincount(labels * AUC_BINS + b, minlength=2 * AUC_BINS).view(2, AUC_BINS)

    def _parts(self) -> list[torch.Tensor]:
        extra = [t.flatten() for t in (self.topk, self.hist) if t is not None]
        return [self.cm.flatten(), *extra]

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the counts of every rank (``reduce`` = distributed.all_reduce_sum bound to the group). Counts
        travel as float64, exact up to 2**53."""
        counts = torch.cat(self._parts()).double()
        flat = reduce(torch.cat([counts, self.rel.flatten(), torch.tensor([self.loss_sum, self.logloss_sum, self.n],
                                                                          dtype=torch.float64)]))
        k = self.c * self.c
        self.cm = flat[:k].round().long().view(self.c, self.c)
        if self.topk is not None:
            self.topk, k = flat[k].round().long(), k + 1
        if self.hist is not None:
            self.hist, k = flat[k:k + 2 * AUC_BINS].round().long().view(2, AUC_BINS), k + 2 * AUC_BINS
        self.rel = flat[k:k + 3 * ECE_BINS].view(3, ECE_BINS).clone()
        self.loss_sum, self.logloss_sum, self.n = flat[-3].item(), flat[-2].item(), int(flat[-1].item())

    def reduce(self, d: Dist) -> None:
        """Sum every rank's counts into this meter (collective under DDP)."""
        self.all_reduce(lambda t: distributed.all_reduce_sum(t, d))

    def tally(self) -> Tally:
        return Tally(self.cm.tolist(), self.loss_sum, self.logloss_sum, self.n,
                     int(self.topk) if self.topk is not None else None,
                     self.hist.tolist() if self.hist is not None else None, self.rel.tolist())

    def compute(self) -> dict[str, Any]:
        t = self.tally()
        return {**compute(t), "count": t.count, "confusion": t.confusion}


class MultiLabelMeter:
    """A multi-label validation pass: keeps every image's label probabilities and true labels (thresholds are
    chosen over all of them, so sums would not do; float64 on the CPU, N x labels numbers), and the summed
    binary cross-entropy. ``compute()`` chooses the thresholds (or uses ``thresholds``: a test set scored
    at the model's own), then returns the table's multi-label metrics, ``thresholds`` and ``per_label``."""

    def __init__(self, class_names: list[str], thresholds: list[float] | tuple[float, ...] | None = None) -> None:
        self.names, self.c = list(class_names), len(class_names)
        self.thresholds = list(thresholds) if thresholds is not None else None
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.loss_sum, self.n = 0.0, 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.double().cpu()
        targets = multi_hot(labels.cpu(), self.c, torch.float64)
        self.loss_sum += F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum().item()
        self.probs.append(logits.sigmoid())
        self.targets.append(targets.to(torch.int8))
        self.n += len(labels)

    def gather(self, d: Dist) -> None:
        """Every rank's images on every rank (in rank order: the metrics do not depend on the order)."""
        mine = (torch.cat(self.probs) if self.probs else torch.empty(0, self.c, dtype=torch.float64),
                torch.cat(self.targets) if self.targets else torch.empty(0, self.c, dtype=torch.int8),
                self.loss_sum, self.n)
        ranks = distributed.gather(mine, d)
        self.probs, self.targets = [r[0] for r in ranks], [r[1] for r in ranks]
        self.loss_sum, self.n = sum(r[2] for r in ranks), sum(r[3] for r in ranks)

    reduce = gather

    def tally(self) -> LabelTally:
        probs = torch.cat(self.probs).tolist() if self.probs else []
        targets = torch.cat(self.targets).tolist() if self.targets else []
        return LabelTally(probs, targets, self.loss_sum, self.n, self.thresholds)

    def compute(self) -> dict[str, Any]:
        t = self.tally()
        return {**compute(t), "count": t.count, "thresholds": list(t.thresholds or []),
                "per_label": per_label_named(t, self.names)}


def eval_meter(class_names: list[str], multilabel: bool = False,
               thresholds: list[float] | tuple[float, ...] | None = None) -> EvalMeter | MultiLabelMeter:
    """The meter of a validation pass for a model of this task."""
    return MultiLabelMeter(class_names, thresholds) if multilabel else EvalMeter(len(class_names))


class LossMeter:
    """Loss sums of the epoch and of the logging window, kept on the device (a ``.item()`` per step would
    sync a GPU) and checkpointed mid-epoch so a resumed epoch reports the same mean. A checkpoint part: its
    ``state_dict`` is every rank's sums (gathered: collective under DDP)."""

    def __init__(self, device: torch.device, d: Dist | None = None) -> None:
        self.device, self.dist = device, d or Dist()
        self.reset()

    def reset(self) -> None:
        self.sum, self.n = torch.zeros((), device=self.device), 0
        self.win_sum, self.win_n = torch.zeros((), device=self.device), 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        loss = loss.detach().float()
        self.sum.add_(loss, alpha=n)  # in place: two kernels a step, no new tensors
        self.win_sum.add_(loss, alpha=n)
        self.n, self.win_n = self.n + n, self.win_n + n

    def _mean(self, total: torch.Tensor, n: int) -> float:
        if self.dist.enabled:  # every rank's images count: sum (loss x n) and n over the group
            both = distributed.all_reduce_sum(torch.stack([total, torch.tensor(float(n), device=self.device)]),
                                              self.dist)
            return (both[0] / both[1].clamp_min(1)).item()
        return (total / max(1, n)).item()

    def window(self) -> float:
        value = self._mean(self.win_sum, self.win_n)
        self.win_sum, self.win_n = torch.zeros((), device=self.device), 0
        return value

    def mean(self) -> float:
        return self._mean(self.sum, self.n)

    def state_dict(self) -> list[dict[str, Any]]:
        mine = {"sum": self.sum.detach().cpu().clone(), "n": self.n, "win_sum": self.win_sum.detach().cpu().clone(),
                "win_n": self.win_n}
        return distributed.gather(mine, self.dist)

    def load_state_dict(self, ranks: list[dict[str, Any]]) -> None:
        """This rank's sums; from a run of another number of processes rank 0 takes them all (the epoch's mean
        stays the same) and the others start at zero."""
        self.reset()
        if len(ranks) == self.dist.world:
            mine = ranks[self.dist.rank]
        elif self.dist.main:
            mine = {k: sum(r[k] for r in ranks) for k in ranks[0]}
        else:
            return
        self.sum, self.win_sum = mine["sum"].to(self.device).clone(), mine["win_sum"].to(self.device).clone()
        self.n, self.win_n = mine["n"], mine["win_n"]
