"""Tiny, learnable test data written as real image files (and IDX files) into a folder.

Classes differ in colour and stripe direction, plus noise, so a tiny CNN separates them at 32 px
within a couple of epochs. Everything is seeded: the same call writes the same bytes.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# (base colour, stripe direction) per class index; 0 = horizontal stripes, 1 = vertical, 2 = diagonal
COLOURS = [(210, 70, 50), (50, 90, 210), (60, 190, 70), (200, 190, 40), (160, 60, 190)]


def pattern(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 picture of class ``cls``: its colour, its stripes (4 per side), noise."""
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 2 * np.pi)
    coord = [y / h, x / w, (x / w + y / h) / 2][cls % 3]
    stripes = (np.sin(2 * np.pi * 4 * coord + phase) > 0).astype(np.float32)
    colour = np.array(COLOURS[cls % len(COLOURS)], np.float32)
    img = colour * (0.55 + 0.45 * stripes[..., None]) + rng.normal(0, 18, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator, sizes: tuple[int, int]) -> tuple[int, int]:
    lo, hi = sizes
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))  # not square on purpose


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_kaggle(root: Path, n_per_class: int = 12, n_test: int = 6, bad: bool = True,
                sizes: tuple[int, int] = (40, 90)) -> dict:
    """Write ``root/train/{cat,dog}.N.jpg`` and ``root/test/N.jpg`` (Kaggle Dogs vs. Cats layout).

    With ``bad``, train also gets odd-but-good files (grayscale JPEG, CMYK JPEG, RGBA PNG and palette PNG
    named ``.jpg``) and bad ones (0-byte, truncated JPEG, text named ``.jpg``).
    Returns ``{"root", "train", "test": Path, "good", "bad": [Path], "odd": [Path], "test_ids": [str],
    "test_labels": {id: class name}}``; ``good`` includes ``odd``.
    """
    rng = np.random.default_rng(0)
    train, test = Path(root) / "train", Path(root) / "test"
    train.mkdir(parents=True, exist_ok=True)
    test.mkdir(parents=True, exist_ok=True)
    classes = ("cat", "dog")
    good: list[Path] = []
    for ci, name in enumerate(classes):
        for i in range(n_per_class):
            p = train / f"{name}.{i}.jpg"
            Image.fromarray(pattern(ci, *_size(rng, sizes), rng)).save(p, quality=90)
            good.append(p)
    odd: list[Path] = []
    bad_files: list[Path] = []
    if bad:
        n = n_per_class
        rgb = lambda ci: Image.fromarray(pattern(ci, *_size(rng, sizes), rng))  # noqa: E731
        odd_specs = [(f"cat.{n}.jpg", rgb(0).convert("L"), "JPEG"),
                     (f"dog.{n}.jpg", rgb(1).convert("CMYK"), "JPEG"),
                     (f"cat.{n + 1}.jpg", rgb(0).convert("RGBA"), "PNG"),
                     (f"dog.{n + 1}.jpg", rgb(1).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")]
        for name, img, fmt in odd_specs:
            img.save(train / name, fmt)  # PNG content under a .jpg name: PIL must sniff it
            odd.append(train / name)
        good += odd
        (train / f"cat.{n + 2}.jpg").write_bytes(b"")
        full = _jpeg_bytes(pattern(1, 64, 64, rng))
        (train / f"dog.{n + 2}.jpg").write_bytes(full[: len(full) // 2])
        (train / f"cat.{n + 3}.jpg").write_text("this is not an image\n")
        bad_files = [train / f"cat.{n + 2}.jpg", train / f"dog.{n + 2}.jpg", train / f"cat.{n + 3}.jpg"]
    test_labels = {}
    for i in range(1, n_test + 1):
        ci = i % 2
        Image.fromarray(pattern(ci, *_size(rng, sizes), rng)).save(test / f"{i}.jpg", quality=90)
        test_labels[str(i)] = classes[ci]
    return {"root": Path(root), "train": train, "test": test, "good": good, "bad": bad_files, "odd": odd,
            "test_ids": [str(i) for i in range(1, n_test + 1)], "test_labels": test_labels}


def make_folder(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cow"), n_per_class: int = 8,
                sizes: tuple[int, int] = (40, 70)) -> Path:
    """Write ``root/<class>/<class>_<i>.jpg`` (ImageFolder layout; class i gets colour and stripes i)."""
    rng = np.random.default_rng(1)
    root = Path(root)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(pattern(ci, *_size(rng, sizes), rng)).save(root / name / f"{name}_{i}.jpg", quality=90)
    return root


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim  # unsigned bytes; 2051 for images (3 dims), 2049 for labels (1 dim)
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def fmnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n,28,28), labels (n,))``: class k lights a 7x7 block at a class-specific spot."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + (k // 4) * 8, 2 + (k % 4) * 6
        images[i, r:r + 7, c:c + 7] = 230
    return images, labels


def make_fmnist_idx(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = True) -> Path:
    """Write the four Fashion-MNIST IDX files (gzipped or raw) with tiny, learnable content."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 2), ("t10k", n_test, 3)):
        images, labels = fmnist_arrays(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / name).write_bytes(data)
    return root


# The options of every tiny test run: small, single-process, quiet. One place, so a new default of the
# toolkit (a slower one, say) is answered here once rather than in each test file.
TINY = {"model": "smallcnn", "image_size": 32, "batch_size": 4, "num_workers": 0, "print_freq": 2, "lr": 0.01,
        "max_epoch": 1, "progress": "none", "debug_file": None}
# Fashion-MNIST's IDX files at their own size: 28 px, batches of 16, a constant lr
TINY_FMNIST = {"dataset": "fashion-mnist", "image_size": 28, "batch_size": 16, "print_freq": 1, "lr": 0.003,
               "scheduler": "none", "val_split": 0.2}


def tiny_options(data: Path, runs: Path, **kw) -> dict:
    """Options of a tiny run on ``data`` (written by this module) into ``runs``; ``kw`` overrides any.

    ``data``: a folder of Fashion-MNIST IDX files (:func:`make_fmnist_idx`), or a root holding ``train/``
    (and, when present, ``val/`` and ``test/``), or a class-folder tree itself. Without a ``val/`` folder a
    quarter (a fifth for Fashion-MNIST) of the training images validate."""
    data = Path(data)
    if (data / "train-images-idx3-ubyte.gz").is_file():
        opts = {**TINY, **TINY_FMNIST, "fashion_mnist_root": str(data)}
    else:
        train = data / "train" if (data / "train").is_dir() else data
        opts = {**TINY, "train_data_root": str(train)}
        if (data / "val").is_dir():
            opts["val_data_root"] = str(data / "val")
        else:
            opts["val_split"] = 0.25
        if (data / "test").is_dir():
            opts["test_data_root"] = str(data / "test")
    return {**opts, "runs_root": str(runs), **kw}
