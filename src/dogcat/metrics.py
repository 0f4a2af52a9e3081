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

Multi-label models (``--task=multilabel``) are scored from a :class:`LabelTally` instead: every image's label
probabilities and true labels (gathered from every process under DDP), from which each label's decision
threshold is chosen (the one that maximises its F1 on this validation set, :func:`choose_thresholds`) and
the metrics with a ``multilabel`` formula are computed at those thresholds. Average precision and F1 are
written here, in plain Python over sorted scores, as scikit-learn defines them (``average_precision_score``,
``f1_score``; tests/test_multilabel.py checks them against it): scikit-learn is not a dependency of dogcat, and
the table stays free of torch.
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


@dataclass
class LabelTally:
    """A multi-label validation pass: ``scores[n][i]``, the probability of label i for image n; ``targets[n][i]``
    0/1; the summed per-image mean binary cross-entropy; the number of images; the decision thresholds the
    F1 and accuracy are computed at (None: choose them here, :func:`choose_thresholds`)."""

    scores: list[list[float]]
    targets: list[list[int]]
    loss_sum: float
    count: int
    thresholds: list[float] | None = None

    def __post_init__(self) -> None:
        columns = list(zip(*self.scores)) if self.scores else []
        truth = list(zip(*self.targets)) if self.targets else []
        n = len(columns) or (len(self.thresholds) if self.thresholds else 0)
        if self.thresholds is None:
            self.thresholds = choose_thresholds(columns, truth)
        self.labels = [label_scores(list(columns[i]), list(truth[i]), self.thresholds[i]) if columns else
                       {"ap": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": self.thresholds[i],
                        "support": 0, "predicted": 0, "tp": 0} for i in range(n)]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def exact_match(self) -> float:
        """The fraction of images whose predicted label set is exactly the true one (scikit-learn's
        ``accuracy_score`` of indicator matrices: "subset accuracy")."""
        cut = self.thresholds or []
        hits = sum(all((p >= c) == bool(y) for p, y, c in zip(ps, ys, cut)) for ps, ys in zip(self.scores, self.targets))
        return hits / self.count if self.count else math.nan

    def f1_micro(self) -> float:
        tp = sum(s["tp"] for s in self.labels)
        denom = sum(s["support"] + s["predicted"] for s in self.labels)
        return 2 * tp / denom if denom else 0.0

    def mean_ap(self) -> float:
        """Mean over the labels that have a positive image (AP says nothing of a label without one)."""
        return _mean([s["ap"] for s in self.labels])


def _precision_recall_steps(scores: list[float], truth: list[int]) -> list[tuple[float, int, int]]:
    """``[(score, true positives, predicted positives)]`` with everything scoring at least ``score`` predicted
    positive, one entry per distinct score, from the highest down."""
    steps: list[tuple[float, int, int]] = []
    tp = n = 0
    for s, y in sorted(zip(scores, truth), key=lambda sy: -sy[0]):
        if steps and s == steps[-1][0]:
            tp, n = tp + y, n + 1
            steps[-1] = (s, tp, n)
            continue
        tp, n = tp + y, n + 1
        steps.append((s, tp, n))
    return steps


def average_precision(scores: list[float], truth: list[int]) -> float | None:
    """Average precision as scikit-learn's ``average_precision_score``: sum over thresholds of (recall gained)
    x precision; None when there is no positive."""
    pos = sum(truth)
    if not pos:
        return None
    ap = prev_tp = 0.0
    for _, tp, n in _precision_recall_steps(scores, truth):
        ap += (tp - prev_tp) / pos * (tp / n)
        prev_tp = tp
    return ap


def choose_thresholds(columns: Sequence[Sequence[float]], truth: Sequence[Sequence[int]]) -> list[float]:
    """Each label's decision threshold: the one of highest F1 on these scores (the first, i.e. highest, of equal
    F1s), placed halfway between the lowest score it keeps and the highest it leaves out, so that a slightly
    different score on new images does not flip the decision. A label without positives here keeps 0.5."""
    out = []
    for scores, ys in zip(columns, truth):
        pos = sum(ys)
        steps = _precision_recall_steps(list(scores), list(ys))
        best, cut = 0.0, 0.5
        for k, (s, tp, n) in enumerate(steps):
            f1 = 2 * tp / (pos + n) if pos else 0.0
            if f1 > best:
                below = steps[k + 1][0] if k + 1 < len(steps) else 0.0
                best, cut = f1, (s + below) / 2
        out.append(cut)
    return out


def label_scores(scores: list[float], truth: list[int], threshold: float) -> dict[str, Any]:
    """One label's AP, and its precision, recall and F1 when ``probability >= threshold`` predicts it (a ratio
    with nothing to divide by is 0.0, as scikit-learn's ``zero_division=0``)."""
    tp = sum(1 for s, y in zip(scores, truth) if y and s >= threshold)
    predicted = sum(1 for s in scores if s >= threshold)
    support = sum(truth)
    p = tp / predicted if predicted else 0.0
    r = tp / support if support else 0.0
    return {"ap": average_precision(scores, truth), "f1": 2 * tp / (support + predicted) if support + predicted else 0.0,
            "precision": p, "recall": r, "threshold": threshold, "support": support, "predicted": predicted, "tp": tp}


def per_label_named(t: LabelTally, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each label's AP, F1, precision, recall, threshold and support by name (``result.json``'s ``per_label``)."""
    return {name: {k: v for k, v in s.items() if k not in ("predicted", "tp")} for name, s in zip(names, t.labels)}


@dataclass(frozen=True)
class Metric:
    name: str                                 # logged as val_<name>
    higher_is_better: bool
    compute: Callable[[Tally], float]
    doc: str
    fmt: str = ".4f"
    applies: Callable[[int], bool] = lambda num_classes: True   # for how many classes it means something
    multilabel: Callable[[LabelTally], float] | None = None     # its formula for a multi-label model, if any


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


def _never(num_classes: int) -> bool:
    return False


_TABLE = [
    Metric("loss", False, lambda t: t.loss_sum / max(1, t.count), "mean cross-entropy (multi-label: mean binary "
           "cross-entropy over images and labels)", multilabel=lambda t: t.loss_sum / max(1, t.count)),
    Metric("accuracy", True, lambda t: sum(r[i] for i, r in enumerate(t.confusion)) / max(1, t.count),
           "fraction classified correctly (multi-label: with exactly the true set of labels)",
           multilabel=LabelTally.exact_match),
    Metric("logloss", False, lambda t: t.logloss_sum / max(1, t.count),
           "Kaggle's log loss: probabilities clipped to [1e-15, 1 - 1e-15]"),
    Metric("balanced_accuracy", True, lambda t: _mean(t.recalls()),
           "mean per-class recall: accuracy that a large class cannot carry"),
    Metric("f1_macro", True, f1_macro, "mean per-class F1: every class counts the same (multi-label: per label, "
           "at its threshold)", multilabel=lambda t: _mean([s["f1"] for s in t.labels])),
    Metric("f1_weighted", True, f1_weighted, "per-class F1 weighted by support"),
    Metric(f"top{TOP_K}_accuracy", True, _topk, f"fraction whose label is among the {TOP_K} highest scores",
           applies=lambda c: c > TOP_K),
    Metric("ece", False, _ece, f"expected calibration error: |accuracy - confidence| over {ECE_BINS} equal-width "
           "confidence bins, weighted by their images (0: the probabilities mean what they say)"),
    Metric("auroc", True, _auroc, "ROC-AUC of the class-1 score (2 classes; binned log-odds, ties count 1/2)",
           applies=lambda c: c == 2),
    Metric("map", True, lambda t: math.nan, "multi-label: mean over the labels of their average precision",
           applies=_never, multilabel=LabelTally.mean_ap),
    Metric("f1_micro", True, lambda t: math.nan, "multi-label: F1 of all (image, label) decisions pooled, at "
           "each label's threshold", applies=_never, multilabel=LabelTally.f1_micro),
]
METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}
VAL = "val_"  # a validation metric's name as logged (metrics.jsonl, --monitor): val_accuracy
DEFAULT_MONITOR = VAL + "accuracy"  # what picks best.pt when nothing says otherwise (--monitor's default)


def compute(t: Tally | LabelTally) -> dict[str, float]:
    """Every metric of the table that applies to this many classes (or to a multi-label tally), by name."""
    if isinstance(t, LabelTally):
        return {name: float(m.multilabel(t)) for name, m in METRICS.items() if m.multilabel is not None}
    return {name: float(m.compute(t)) for name, m in METRICS.items() if m.applies(t.num_classes)}


def check_monitor(monitor: str, num_classes: int, multilabel: bool = False) -> str | None:
    """Why ``monitor`` cannot rank a run on ``num_classes`` classes (a metric left out for them), else None."""
    name = monitor.removeprefix(VAL)
    if multilabel:
        if name in METRICS and METRICS[name].multilabel is None:
            return (f"--monitor={monitor} is not computed for a multi-label model; allowed here: "
                    f"{', '.join(VAL + n for n, m in METRICS.items() if m.multilabel is not None)}")
        return None
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


def format_per_label(per_label: Mapping[str, Mapping[str, Any]]) -> str:
    """A multi-label validation's table: each label's AP, F1, precision, recall, threshold and support."""
    names = {name: escape(name)[:20] for name in per_label}
    w = max(8, *(len(n) + 1 for n in names.values()))
    cols = ("ap", "f1", "precision", "recall", "threshold", "support")
    head = "label".ljust(w) + "".join(c.rjust(10) for c in cols)
    rows = [names[name].ljust(w) + "".join(
        (str(s[c]) if c == "support" else "-" if s.get(c) is None else f"{s[c]:.4f}").rjust(10) for c in cols)
        for name, s in per_label.items()]
    return "\n".join([head, *rows])
