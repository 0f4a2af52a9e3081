"""A data layout in one file, written as a plug-in would write it: Keras-style ``.npz`` arrays (``x_train``
(N, H, W) uint8 grayscale, ``y_train``, ``x_test``, ``y_test``, optional ``class_names``), held in memory.

Importing this module registers it. ``dogcat.train(dataset="npz", train_data_root="data.npz")`` then trains on
it, ``--dataset=auto`` recognises a ``.npz`` file, and ``val`` / ``test`` / the manifest work as for the built-in
layouts: nothing else in dogcat changes (tests/test_layout.py shows it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from dogcat.config import DataConfig
from dogcat.data import ArrayImages, DataBundle, DataError, Layout, Preprocess, register_layout, stratified_split
from dogcat.data.augment import BatchPolicy
from dogcat.data.transforms import BatchPadCropFlip, EvalBatch, keep_uint8
from dogcat.io import sha256_file


def _file(cfg: DataConfig) -> Path:
    path = Path(cfg.train_data_root or "").expanduser()
    if not path.is_file():
        raise DataError(f"--train-data-root={path}: no such .npz file")
    return path


def _arrays(cfg: DataConfig, split: str, size: int) -> tuple[torch.Tensor, list[int], list[str]]:
    """Images (N, 1, size, size) uint8, labels and class names of one split."""
    with np.load(_file(cfg)) as z:
        x, y = torch.from_numpy(z[f"x_{split}"]).unsqueeze(1), z[f"y_{split}"].astype(np.int64).tolist()
        names = [str(n) for n in z["class_names"]] if "class_names" in z else [str(i) for i in range(max(y) + 1)]
    if x.shape[-1] != size:
        x = TF.resize(x, [size, size], antialias=True)
    return x, y, names


def _subset(x: torch.Tensor, y: list[int], index: Sequence[int], split: str,
            prepare: Callable[[torch.Tensor, int], torch.Tensor]) -> ArrayImages:
    """The rows ``index`` of ``x``; their pseudo-paths ``npz/<split>/<row>`` go into the split files."""
    rows = list(index)
    samples = [(f"npz/{split}/{i}", y[i]) for i in rows]
    return ArrayImages(x.permute(0, 2, 3, 1), rows, samples, [str(i) for i in rows], prepare)


@register_layout("npz")
class NpzLayout(Layout):
    doc = "Keras-style .npz arrays (x_train, y_train, x_test, y_test) as --train-data-root"
    priority = 15  # before the folder layouts: they refuse a file as --train-data-root
    real_paths = False  # split rows are pseudo-paths

    def detect(self, cfg: DataConfig) -> bool:
        return str(cfg.train_data_root or "").endswith(".npz")

    def preprocess(self, classes: Sequence[str], size: int) -> Preprocess:
        return Preprocess(tuple(classes), 1, (0.5,), (0.5,), size, "squash")

    def train_val(self, cfg: DataConfig, processes: int = 1) -> DataBundle:
        x, y, names = _arrays(cfg, "train", cfg.image_size)
        pre = self.preprocess(names, cfg.image_size)
        tr, va = stratified_split(y, cfg.val_split, cfg.split_seed) if cfg.val_split else (range(len(y)), [])
        train = _subset(x, y, tr, "train", keep_uint8)  # uint8 to the device, augmented there per batch
        val = _subset(x, y, va, "train", EvalBatch(None, pre.mean, pre.std)) if va else None
        splits = {"train": train.samples, **({"val": val.samples} if val else {})}
        augment = BatchPadCropFlip(cfg.image_size // 8, cfg.augment != "none", pre.mean, pre.std,
                                   BatchPolicy(cfg.augment, cfg.random_erasing, pre.mean))  # a preset, erasing
        return DataBundle(train, val, pre, self.name, splits, augment)

    def test_set(self, cfg: DataConfig, pre: Preprocess) -> Dataset:
        x, y, _ = _arrays(cfg, "test", pre.size)
        return _subset(x, y, range(len(y)), "test", EvalBatch(None, pre.mean, pre.std))

    def fingerprint(self, bundle: DataBundle, cfg: DataConfig) -> dict[str, Any]:
        return {"sha256": sha256_file(_file(cfg)), "method": "sha256 of the .npz file",
                "count": sum(len(v) for v in bundle.splits.values())}
