"""Validation metrics: loss, accuracy, Kaggle log loss, confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-15  # Kaggle's clipping for log loss


class EvalMeter:
    """Accumulates sums over batches; ``compute()`` returns plain numbers (JSON-safe)."""

    def __init__(self, num_classes: int) -> None:
        self.c = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.loss_sum = 0.0
        self.logloss_sum = 0.0
        self.n = 0

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
        self.cm += torch.bincount(labels * self.c + preds, minlength=self.c * self.c).view(self.c, self.c)
        self.n += len(labels)

    def all_reduce(self, reduce) -> None:
        """Sum the counts of every rank (``reduce`` = distributed.all_reduce_sum bound to the group)."""
        flat = torch.cat([self.cm.flatten().double(), torch.tensor([self.loss_sum, self.logloss_sum, self.n],
                                                                   dtype=torch.float64)])
        flat = reduce(flat)
        k = self.c * self.c
        self.cm = flat[:k].round().long().view(self.c, self.c)
        self.loss_sum, self.logloss_sum, self.n = flat[k].item(), flat[k + 1].item(), int(flat[k + 2].item())

    def compute(self) -> dict:
        n = max(1, self.n)
        return {"loss": self.loss_sum / n, "accuracy": self.cm.diag().sum().item() / n,
                "logloss": self.logloss_sum / n, "count": self.n, "confusion": self.cm.tolist()}


def format_confusion(cm: list[list[int]], class_names: list[str]) -> str:
    """Rows: actual class; columns: predicted class."""
    names = [n[:12] for n in class_names]
    w = max(8, max(len(n) for n in names) + 1, max(len(str(v)) for row in cm for v in row) + 1)
    head = "actual \\ predicted".ljust(max(19, w)) + "".join(n.rjust(w) for n in names)
    rows = [n.ljust(max(19, w)) + "".join(str(v).rjust(w) for v in row) for n, row in zip(names, cm)]
    return "\n".join([head, *rows])
