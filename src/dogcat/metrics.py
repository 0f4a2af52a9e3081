"""The metrics table: each validation metric once, with its direction, format, reduction and formula.

Everything that ranks or shows a metric reads this table: config validation (``--monitor`` choices),
checkpoint ranking (best.pt, top-k), ``dogcat runs`` (best column), TensorBoard's hparams, the HTML report
and the epoch log line. Adding a metric is one entry below: it is then computed every validation, logged to
metrics.jsonl as ``val_<name>``, drawn in TensorBoard, shown in the report, and can be ``--monitor``.

Formulas take a :class:`Tally`, the sums one validation pass accumulates (``engine/meters.py``). Under DDP
every process's tally is summed first (``reduce="sum"``), so a metric is exact over the whole validation
set whatever the number of processes. Plain Python, no torch: the CLI reads the table without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


@dataclass
class Tally:
    """Sums over a validation set: ``confusion[true][pred]`` counts, summed losses, the number of images."""

    confusion: list[list[int]]
    loss_sum: float
    logloss_sum: float
    count: int

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
    reduce: str = "sum"                       # how processes combine: their tallies are summed, then computed


def _mean(xs: Sequence[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else math.nan


_TABLE = [
    Metric("loss", False, lambda t: t.loss_sum / max(1, t.count), "mean cross-entropy"),
    Metric("accuracy", True, lambda t: sum(r[i] for i, r in enumerate(t.confusion)) / max(1, t.count),
           "fraction classified correctly"),
    Metric("logloss", False, lambda t: t.logloss_sum / max(1, t.count),
           "Kaggle's log loss: probabilities clipped to [1e-15, 1 - 1e-15]"),
    Metric("balanced_accuracy", True, lambda t: _mean(t.recalls()),
           "mean per-class recall: accuracy that a large class cannot carry"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}
VAL = "val_"


def compute(t: Tally) -> dict[str, float]:
    """Every metric of the table from one tally, by name."""
    return {name: float(m.compute(t)) for name, m in METRICS.items()}


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
    names = [n[:12] for n in class_names]
    w = max(8, max(len(n) for n in names) + 1, max(len(str(v)) for row in cm for v in row) + 1)
    head = "actual \\ predicted".ljust(max(19, w)) + "".join(n.rjust(w) for n in names)
    rows = [n.ljust(max(19, w)) + "".join(str(v).rjust(w) for v in row) for n, row in zip(names, cm)]
    return "\n".join([head, *rows])
