"""Deterministic stratified train/val split, and the split files written into a run folder."""

from __future__ import annotations

import csv
import io
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_text, safe_dir
from .images import DataError
from .layout import DataBundle, get_layout


def check_val_split(val_split: float) -> None:
    if not 0.0 <= val_split < 1.0:
        raise DataError(f"--val-split={val_split} must be in [0, 1): the fraction of training images held out")


def stratified_split(labels: Sequence[int], val_split: float, seed: int,
                     keys: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Split positions into (train, val), per class: sort by ``keys`` (else position), shuffle with
    ``random.Random(seed)``, hold out ``round(n * val_split)``.

    Each class gets its own ``Random(seed)``, so adding or removing a class leaves the other classes'
    split unchanged, and the result never depends on the order files were listed in. A class keeps at
    least one training sample.
    """
    check_val_split(val_split)
    by_class: dict[int, list[int]] = defaultdict(list)
    for pos, y in enumerate(labels):
        by_class[int(y)].append(pos)
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class):
        pos = by_class[y]
        if keys is not None:
            pos.sort(key=lambda p: keys[p])
        random.Random(seed).shuffle(pos)
        n_val = min(round(len(pos) * val_split), len(pos) - 1)
        val += pos[:n_val]
        train += pos[n_val:]
    return sorted(train), sorted(val)


def _write_atomic(path: Path, rows: list[tuple[str, str]]) -> None:
    """The CSV, whole or not at all (io.atomic_write_text); non-UTF-8 file names are written as they are."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "label"])
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue(), f"writing the split file {path.name}")


def write_splits(bundle: DataBundle, out_dir: Path) -> list[Path]:
    """Write ``out_dir/{train,val}.csv`` (a run's ``splits/`` folder; header ``path,label``, label = class name,
    absolute paths): list files that ``--train-list``/``--val-list`` read back to reproduce the run's split.

    A layout without ``real_paths`` (Fashion-MNIST: ``fashion-mnist/<split>/<index>``) writes its pseudo-paths
    as they are: a record, not loadable files.
    """
    out_dir = safe_dir(out_dir)  # the run's own folder: a real one, never a link to elsewhere
    written: list[Path] = []
    absolute = get_layout(bundle.layout).real_paths
    for name in ("train", "val"):
        rows = bundle.splits.get(name)
        if not rows:
            continue
        lines = [(os.path.abspath(p) if absolute else p, bundle.pre.label_text(y)) for p, y in rows]
        path = out_dir / f"{name}.csv"
        _write_atomic(path, lines)
        written.append(path)
    return written
