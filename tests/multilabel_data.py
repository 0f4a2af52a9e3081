"""Tiny multi-label data: 32x32 PNGs whose labels a small CNN learns in a few steps.

Four labels: ``red``, ``green``, ``blue`` (that colour channel is bright) and ``bar`` (a dark band across the
top quarter). Every image has 2 or 3 of them. Written as a CSV list (``path,labels``, ``;`` between labels)
or with one 0/1 column per label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["bar", "blue", "green", "red"]  # sorted: the order a 'labels' column gives them


def picture(labels: set[str], rng: np.random.Generator, side: int = 32) -> np.ndarray:
    img = rng.normal(40, 12, (side, side, 3))
    for c, name in enumerate(("red", "green", "blue")):
        if name in labels:
            img[..., c] += 170
    if "bar" in labels:
        img[: side // 4] = rng.normal(10, 4, (side // 4, side, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def label_sets(n: int, seed: int) -> list[list[str]]:
    """``n`` label sets of 2 or 3 labels each, every label in some of them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 2 + int(rng.integers(0, 2))
        out.append(sorted(rng.choice(LABELS, k, replace=False).tolist()))
    return out


def write_images(root: Path, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """``n`` images under ``root`` and their labels, as (path relative to root's parent, labels)."""
    rng = np.random.default_rng(seed + 1)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, labels in enumerate(label_sets(n, seed)):
        path = root / f"img{i:03d}.png"
        Image.fromarray(picture(set(labels), rng)).save(path)
        rows.append((f"{root.name}/{path.name}", labels))
    return rows


def write_list(path: Path, rows: list[tuple[str, list[str]]], columns: bool = False, sep: str = ";",
               path_column: str = "path", label_column: str = "labels") -> Path:
    """A CSV list: ``path,labels`` (``sep`` between labels), or one 0/1 column per label (``columns``)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if columns:
            w.writerow([path_column, *LABELS])
            w.writerows([p, *(int(name in labels) for name in LABELS)] for p, labels in rows)
        else:
            w.writerow([path_column, label_column])
            w.writerows([p, sep.join(labels)] for p, labels in rows)
    return path


def make(tmp: Path, n_train: int = 48, n_val: int = 24, **kw) -> tuple[Path, Path]:
    """Train and val lists of generated images in ``tmp``."""
    train = write_list(tmp / "train.csv", write_images(tmp / "train", n_train, 0), **kw)
    val = write_list(tmp / "val.csv", write_images(tmp / "val", n_val, 1), **kw)
    return train, val
