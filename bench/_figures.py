"""How every bench prints a figure: mean ± the sample standard deviation over seeds, rounds or alternated pairs,
as airbench reports its results (a single run says nothing about how much a seed or a neighbour moves it)."""

from __future__ import annotations

import statistics
from typing import Callable, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def mean_std(xs: list[float], fmt: str = "{:.4f}") -> str:
    """``mean ± std`` with the sample standard deviation (n - 1, as airbench's ``torch.std``); one value has none."""
    m = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{fmt.format(m)} ± {fmt.format(sd)}"


def ratio_summary(ratios: list[float], unit: str = "pairs") -> str:
    """Per-pair ratios as mean ± std, with the median and the range (a pair in a neighbour's burst shows there)."""
    return (f"{mean_std(ratios, '{:.3f}')} over {len(ratios)} {unit} (median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.3f}-{max(ratios):.3f})")


def alternated(pair: int, a: Callable[[], A], b: Callable[[], B]) -> tuple[A, B]:
    """``(a(), b())``, run b first in even pairs and a first in odd ones, so that a neighbour's burst or a
    machine warming up favours neither side over the pairs."""
    if pair % 2:
        first = a()
        return first, b()
    second = b()
    return a(), second
