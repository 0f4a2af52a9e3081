"""The metrics table: each validation metric once, with its direction, format, reduction and formula.

Everything that ranks or shows a metric reads this table: config validation (``--monitor`` choices),
checkpoint ranking (best.pt, top-k), ``dogcat runs`` (best column), TensorBoard's hparams, the HTML report
and the epoch log line. Adding a metric is one entry below: it is then computed every validation, logged to
metrics.jsonl as ``val_<name>``, drawn in TensorBoard, shown in the report, and can be ``--monitor``.

Formulas take a :class:`Tally`, the sums one validation pass accumulates (``engine/meters.py``). Under DDP
every process's tally is summed first, so a metric is exact over the whole validation set whatever the
number of processes. Plain Python, no torch: the CLI reads the table without loading it.
A metric that says nothing for some class counts (top-5 of 5 classes, ROC-AUC of 3) has ``applies``: it is
then left out of the results, and ``--monitor`` cannot name it (:func:`check_monitor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .console import escape


TOP_K = 5             # top-k accuracy is top-5, reported when there are more than 5 classes
AUC_BINS = 4096       # ROC-AUC: histogram bins of the positive class's log-odds, over [-AUC_RANGE, AUC_RANGE]
AUC_RANGE = 20.0      # beyond +-20 (p < 2e-9 from 0 or 1) scores share the end bins
ECE_BINS = 15         # expected calibration error: 15 equal-width confidence bins over [0, 1] (Guo et al. 2017)


@dataclass
class Tally:
    """Sums over a validation set: ``confusion[true][pred]`` counts, summed losses, the number of images; with
    more than TOP_K classes the images whose label is among the TOP_K highest scores; with 2 classes
    ``score_hist[label][bin]``, counts of the positive class's log-odds by bin (see ``engine/meters.py``)."""

    confusion: list[list[int]]
    loss_sum: float
    logloss_sum: float
    count: int
    topk_correct: int | None = None
    score_hist: list[list[int]] | None = None
    reliability: list[list[float]] | None = None  # [count, confidence sum, correct sum] per confidence bin

    @property
    def num_classes(self) -> int:
        return len(self.confusion)

    def recalls(self) -> list[float | None]:
        """Per-class recall (None for a class with no images)."""
        return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion)]


@dataclass(frozen=True)
class Metric:
    name: str                                 # logged as val_<name>
    higher_is_better: bool
    compute: Callable[[Tally], float]
    doc: str
    fmt: str = ".4f"
    applies: Callable[[int], bool] = lambda num_classes: True   # for how many classes it means something


def _mean(xs: Sequence[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else math.nan


def per_class(confusion: Sequence[Sequence[int]]) -> list[dict[str, float | int]]:
    """Precision, recall, F1 and support of each class (rows actual, columns predicted). A ratio with nothing
    to divide by is 0.0, as scikit-learn's ``zero_division=0``."""
    out = []
    for i, row in enumerate(confusion):
        tp, support, predicted = row[i], sum(row), sum(r[i] for r in confusion)
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        out.append({"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": support,
                    "predicted": predicted})
    return out


def per_class_named(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`per_class` keyed by class name (``result.json``'s ``per_class`` block)."""
    return {name: {k: v for k, v in s.items() if k != "predicted"}
            for name, s in zip(class_names, per_class(confusion))}


def f1_macro(t: Tally) -> float:
    """Mean F1 over the classes that occur (in the labels or the predictions), as scikit-learn's default."""
    return _mean([s["f1"] if s["support"] or s["predicted"] else None for s in per_class(t.confusion)])


def f1_weighted(t: Tally) -> float:
    """F1 of each class weighted by its support."""
    scores = per_class(t.confusion)
    total = sum(s["support"] for s in scores)
    return sum(s["f1"] * s["support"] for s in scores) / total if total else math.nan


def auroc_from_hist(neg: Sequence[int], pos: Sequence[int]) -> float:
    """ROC-AUC from score histograms (bins in ascending score): P(a positive scores above a negative), a tie
    (same bin) counting one half, which is the Mann-Whitney U statistic over the binned scores."""
    n_pos, n_neg = sum(pos), sum(neg)
    if not n_pos or not n_neg:
        return math.nan
    below = wins = 0.0
    for p, n in zip(pos, neg):
        wins += p * (below + 0.5 * n)
        below += n
    return wins / (n_pos * n_neg)


def _auroc(t: Tally) -> float:
    return auroc_from_hist(*t.score_hist) if t.score_hist else math.nan


def ece(reliability: Sequence[Sequence[float]]) -> float:
    """Expected calibration error from per-bin sums ``[counts, confidence sums, correct sums]``: the mean over
    images of |accuracy - mean confidence| of their bin, i.e. sum over bins of |correct - confidence| / N."""
    counts, conf, correct = reliability
    n = sum(counts)
    return sum(abs(a - c) for a, c in zip(correct, conf)) / n if n else math.nan


def _ece(t: Tally) -> float:
    return ece(t.reliability) if t.reliability else math.nan


def _topk(t: Tally) -> float:
    return t.topk_correct / t.count if t.count and t.topk_correct is not None else math.nan


_TABLE = [
    Metric("loss", False, lambda t: t.loss_sum / max(1, t.count), "mean cross-entropy"),
    Metric("accuracy", True, lambda t: sum(r[i] for i, r in enumerate(t.confusion)) / max(1, t.count),
           "fraction classified correctly"),
    Metric("logloss", False, lambda t: t.logloss_sum / max(1, t.count),
           "Kaggle's log loss: probabilities clipped to [1e-15, 1 - 1e-15]"),
    Metric("balanced_accuracy", True, lambda t: _mean(t.recalls()),
           "mean per-class recall: accuracy that a large class cannot carry"),
    Metric("f1_macro", True, f1_macro, "mean per-class F1: every class counts the same"),
    Metric("f1_weighted", True, f1_weighted, "per-class F1 weighted by support"),
    Metric(f"top{TOP_K}_accuracy", True, _topk, f"fraction whose label is among the {TOP_K} highest scores",
           applies=lambda c: c > TOP_K),
    Metric("ece", False, _ece, f"expected calibration error: |accuracy - confidence| over {ECE_BINS} equal-width "
           "confidence bins, weighted by their images (0: the probabilities mean what they say)"),
    Metric("auroc", True, _auroc, "ROC-AUC of the class-1 score (2 classes; binned log-odds, ties count 1/2)",
           applies=lambda c: c == 2),
]
METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}
VAL = "val_"  # a validation metric's name as logged (metrics.jsonl, --monitor): val_accuracy
DEFAULT_MONITOR = VAL + "accuracy"  # what picks best.pt when nothing says otherwise (--monitor's default)


def compute(t: Tally) -> dict[str, float]:
    """Every metric of the table that applies to this many classes, from one tally, by name."""
    return {name: float(m.compute(t)) for name, m in METRICS.items() if m.applies(t.num_classes)}


def check_monitor(monitor: str, num_classes: int) -> str | None:
    """Why ``monitor`` cannot rank a run on ``num_classes`` classes (a metric left out for them), else None."""
    name = monitor.removeprefix(VAL)
    if name in METRICS and not METRICS[name].applies(num_classes):
        return (f"--monitor={monitor} is not computed for {num_classes} classes ({METRICS[name].doc}); "
                f"allowed here: {', '.join(VAL + n for n, m in METRICS.items() if m.applies(num_classes))}")
    return None


def monitors() -> tuple[str, ...]:
    """What ``--monitor`` may name: each metric as logged, ``val_<name>``."""
    return tuple(VAL + name for name in METRICS)


def metric(monitor: str) -> Metric:
    """The table entry of a logged name (``val_accuracy``) or a bare one (``accuracy``); ``train_loss``
    counts as a loss."""
    name = monitor.removeprefix(VAL)
    if name == "train_loss":
        name = "loss"
    if name not in METRICS:
        raise KeyError(f"{monitor!r} is not a metric; metrics: {', '.join(METRICS)}")
    return METRICS[name]


def is_better(monitor: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Is ``value`` an improvement on ``best`` (None: nothing yet) by more than ``min_delta``?"""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return not math.isnan(value)
    gain = value - best if metric(monitor).higher_is_better else best - value
    return gain > min_delta


def best_of(monitor: str, values: Sequence[float]) -> int:
    """Index of the best value (the first one of equal values)."""
    best = 0
    for i, v in enumerate(values):
        if is_better(monitor, v, values[best]):
            best = i
    return best


def sort_key(monitor: str, value: float) -> float:
    """Key that sorts best first."""
    return -value if metric(monitor).higher_is_better else value


def fmt(monitor: str, value: float) -> str:
    return format(value, metric(monitor).fmt)


def summary(values: Mapping[str, Any], prefix: str = "") -> str:
    """``loss 0.2861, accuracy 0.9012, ...``: each metric of the table found in ``values``, in table order."""
    return ", ".join(f"{prefix}{name.replace('_', ' ')} {format(values[name], m.fmt)}"
                     for name, m in METRICS.items() if isinstance(values.get(name), (int, float)))


def format_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Rows: actual class; columns: predicted class."""
    names = [escape(n)[:12] for n in class_names]  # a name with a newline or ESC: one cell, shown escaped
    w = max(8, max(len(n) for n in names) + 1, max(len(str(v)) for row in cm for v in row) + 1)
    head = "actual \\ predicted".ljust(max(19, w)) + "".join(n.rjust(w) for n in names)
    rows = [n.ljust(max(19, w)) + "".join(str(v).rjust(w) for v in row) for n, row in zip(names, cm)]
    return "\n".join([head, *rows])
