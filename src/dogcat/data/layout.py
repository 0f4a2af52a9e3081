"""The data-layout registry: what a layout provides (:class:`Layout`), ``@register_layout``, lookup by name and
auto-detection. A leaf of ``data/``: layout modules import from here, ``data/__init__.py`` imports them all
(which registers them), so nothing imports in a circle.

A new layout is one module: a :class:`Layout` subclass (or, for image files, a
:class:`~dogcat.data.pipeline.ImageLayout`) under ``@register_layout("name")``, imported once before use.
``--dataset=name`` then picks it, and ``--dataset=auto`` tries each layout's :meth:`Layout.detect` in
``priority`` order (lowest first).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..io import TEXT
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .images import DataError

Samples = list[tuple[str, int]]  # (path or pseudo-path, class index)


@dataclass
class DataBundle:
    """Training and validation sets with what a model and a run need to know about them."""

    train: Dataset | None
    val: Dataset | None  # None when val_split == 0 and there is no separate validation data
    pre: Preprocess  # what the model trained on this data expects: classes, channels, mean, std, size, resize
    layout: str  # the registered name of the layout that read it
    splits: dict[str, Samples] = field(default_factory=dict)  # for the split files and the data fingerprint
    # in-memory and cached training sets yield uint8 batches; this (augments and) normalises them on the
    # device (the trainer applies it right after moving a batch there); (images, Batch.seed) -> images
    batch_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None


class Layout:
    """What a data layout provides. Subclasses override what differs; ``name`` is set by ``register_layout``.

    ``doc``: one line for error messages. ``priority``: where :func:`detect` asks it (lowest first).
    ``real_paths``: the split rows hold loadable files (written as absolute paths), not pseudo-paths.
    """

    name: str = ""
    doc: str = ""
    priority: int = 100
    real_paths: bool = True
    native_size: int | None = None  # the side of every image as stored, when fixed (``dogcat stats`` reads them so)

    def detect(self, cfg: DataConfig) -> bool:
        """True when ``--dataset=auto`` data is this layout (default: never guessed, only named). May raise a
        DataError for data that is recognisably misplaced; folder layouts read :func:`train_root`."""
        return False

    def sources(self, cfg: DataConfig) -> tuple[str | None, str | None]:
        """The folders or files the training and the separate validation data are read from: packed caches
        live next to them, and ``dogcat runs`` names a run's data after the first."""
        return cfg.train_data_root, cfg.val_data_root

    def preprocess(self, classes: Sequence[str], size: int) -> Preprocess:
        """The preprocessing a model trained on this layout gets (default: RGB photos, ImageNet statistics)."""
        return Preprocess(tuple(classes), 3, IMAGENET_MEAN, IMAGENET_STD, size, "crop")

    def train_val(self, cfg: DataConfig, processes: int = 1) -> DataBundle:
        """Train set (train transform) and val set (eval transform); ``processes`` read it (DDP)."""
        raise NotImplementedError

    def test_set(self, cfg: DataConfig, pre: Preprocess) -> Dataset:
        """The test set for a model that takes ``pre``, with eval transforms."""
        raise DataError(f"--dataset={self.name} has no test set")

    def prepare_files(self, src: Path) -> Samples | None:
        """``dogcat prepare``: the image files of ``src`` to cache when it is this layout's, else None."""
        return None

    def fingerprint(self, bundle: DataBundle, cfg: DataConfig) -> dict[str, Any]:
        """The manifest's record of the data (``sha256``, ``method``, ...). Default: the split rows only."""
        rows = sorted(f"{p}\t{bundle.pre.label_text(y)}" for part in bundle.splits.values() for p, y in part)
        digest = hashlib.sha256("\n".join(rows).encode(**TEXT)).hexdigest()
        return {"sha256": digest, "method": "sha256 of the sorted split rows (path, label)", "count": len(rows)}


L = TypeVar("L", bound=type[Layout])
_REGISTRY: dict[str, type[Layout]] = {}


def register_layout(name: str) -> Callable[[L], L]:
    """Class decorator: register a layout under ``name`` (lower-case); a duplicate name is an error."""
    key = name.strip().lower()

    def deco(cls: L) -> L:
        if key == "auto":
            raise ValueError("'auto' asks for detection: it cannot name a layout")
        if key in _REGISTRY:
            raise ValueError(f"data layout {name!r} registered twice")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def layouts() -> list[Layout]:
    """Every registered layout, in detection order."""
    return [cls() for cls in sorted(_REGISTRY.values(), key=lambda c: (c.priority, c.name))]


def layout_names() -> list[str]:
    return [lay.name for lay in layouts()]


def describe() -> str:
    """The registered layouts in one line, for error messages."""
    return "; ".join(f"{lay.name}: {lay.doc}" if lay.doc else lay.name for lay in layouts())


def get_layout(name: str) -> Layout:
    """The layout registered as ``name`` (any case), or one DataError line listing the registered names."""
    cls = _REGISTRY.get(str(name).strip().lower())
    if cls is None:
        raise DataError(f"--dataset={name!r} is not one of: auto, {', '.join(layout_names())}")
    return cls()


def missing_root(root: Path) -> DataError:
    return DataError(
        f"training data folder {root} does not exist. For a quick demo run "
        f"`dogcat demo` (or `dogcat train --config=fashion-mnist`); for Dogs vs. Cats download train.zip and "
        f"test1.zip from https://www.kaggle.com/c/dogs-vs-cats/data, unzip them and pass "
        f"--train-data-root=DIR/train --test-data-root=DIR/test1")


def train_root(cfg: DataConfig) -> Path:
    """``--train-data-root`` as an existing folder, or the DataError that says what to pass instead."""
    if not cfg.train_data_root:
        raise DataError(f"no training data: pass --train-data-root=DIR or --train-list=FILE; layouts: {describe()}")
    root = Path(cfg.train_data_root).expanduser()
    if not root.exists():
        raise missing_root(root)
    if not root.is_dir():
        raise DataError(f"--train-data-root={root} is a file, not a folder (a list file? use --train-list)")
    return root


def detect(cfg: DataConfig) -> str:
    """The layout's name: ``cfg.dataset`` unless "auto"; else the first layout whose ``detect`` claims it."""
    if str(cfg.dataset).strip().lower() != "auto":
        return get_layout(cfg.dataset).name
    for lay in layouts():
        if lay.detect(cfg):
            return lay.name
    root = train_root(cfg)
    raise DataError(f"{root}: no known data layout. Supported: {describe()}")
