"""Datasets of dogcat: one module per data layout, registered by name (``layout.py``); importing this package
registers the built-in ones: Kaggle Dogs vs. Cats, class folders, Fashion-MNIST and list files.

Every dataset returns :class:`Item`; :func:`make_loader` collates them into :class:`Batch`, dropping
files that cannot be decoded (the main process reports them through :class:`BadFiles`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import DataConfig
from ..preprocess import EVAL_CROP_RATIO, FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess, stored_side
from . import fashion_mnist, folder, given, kaggle, listfile  # noqa: F401  # the built-in layouts: imported, registered
from . import normalize
from .arrays import ArrayImages
from .balance import BalancedSampler, class_counts, class_weights, loss_weights, targets, train_sampler
from .cache import Packed, ensure, packed_dataset  # noqa: F401
from .fashion_mnist import FashionMNIST
from .images import (BadFiles, BadImageWarning, Batch, DataError, ImageFiles, Item, collate_items, decode_image,
                     is_image_file)
from .layout import (DataBundle, Layout, Samples, describe, detect, get_layout, layout_names, layouts,
                     register_layout, train_root)
from .loader import ResumableSampler, SeededItems, ShardSampler, make_loader, resolve_workers
from .pipeline import Files, ImageLayout, image_test_set
from .split import check_val_split, stratified_split, write_splits
from .stats import DataStats, dataset_stats
from .transforms import (BatchNormalize, BatchPadCropFlip, CropFlipBatch, EvalBatch, eval_decode_side,  # noqa: F401
                         eval_transform, eval_transform_for, keep_uint8, squash_transform, train_transform)

__all__ = [
    "DataError", "Item", "Batch", "collate_items", "BadFiles", "BadImageWarning", "DataBundle",
    "Layout", "ImageLayout", "Files", "Samples", "register_layout", "get_layout", "layouts", "layout_names",
    "detect", "train_root", "build_train_val", "build_test", "build_paths", "expand_paths", "prepare",
    "write_splits", "make_loader", "ArrayImages", "Packed", "dataset_stats", "DataStats",
    "resolve_workers", "ResumableSampler", "SeededItems", "ShardSampler", "ImageFiles", "FashionMNIST",
    "decode_image", "stratified_split", "train_transform", "eval_transform", "eval_transform_for", "Preprocess",
    "IMAGENET_MEAN", "IMAGENET_STD", "FMNIST_MEAN", "FMNIST_STD",
    "BalancedSampler", "class_counts", "class_weights", "loss_weights", "targets", "train_sampler",
]

def build_train_val(cfg: DataConfig, processes: int = 1, model_input: dict[str, Any] | None = None) -> DataBundle:
    """Train set (train transform) and val set (eval transform) of the configured data; ``processes``: how
    many training processes read it (DDP: a packed cache is then memory-mapped, one copy for all);
    ``model_input``: a pretrained model's input (``models.pretrained_input``; see ``normalize.with_model_input``
    for what it sets and what wins over it)."""
    layout = get_layout(detect(cfg))
    check_val_split(cfg.val_split)
    if cfg.task == "multilabel" and layout.name != "list":
        raise DataError(f"--task=multilabel reads several labels per image from a list file: pass "
                        f"--train-list=FILE (--dataset={layout.name} gives one class per image)")
    if cfg.label_columns and cfg.task != "multilabel":
        raise DataError(f"--label-columns={cfg.label_columns} gives each image several labels: add --task=multilabel")
    if model_input is not None:
        layout = normalize.with_model_input(layout, model_input)
    # --normalize=dataset: the training split's statistics need the split itself, so build it once with the
    # layout's own statistics, then again with the computed ones (cached for image files; see normalize.py)
    first = layout.train_val(cfg, processes) if cfg.normalize == "dataset" else None
    stats = normalize.resolve(layout, cfg, first)
    if stats is None:
        return first or layout.train_val(cfg, processes)
    return normalize.with_statistics(layout, *stats).train_val(cfg, processes)


def build_test(cfg: DataConfig, layout: str | None, pre: Preprocess) -> Dataset:
    """Test set with eval transforms for a model that takes ``pre``, as ``layout`` (the training data's) reads
    it: Fashion-MNIST's t10k (labelled); for image layouts ``test_list`` or ``test_data_root``, which is also
    what ``layout=None`` (unknown training data: a bare state_dict) reads."""
    if layout is None:
        return image_test_set(cfg, pre)
    return get_layout(layout).test_set(cfg, pre)


def expand_paths(p: str) -> list[str]:
    """Files of one ``predict`` argument: a file, a folder (recursive) or a glob."""
    p = os.path.expanduser(p)
    if any(c in p for c in "*?["):
        out: list[str] = []
        for m in sorted(glob.glob(p, recursive=True)):
            if os.path.isdir(m):
                out += folder.find_images(Path(m))
            elif is_image_file(m):
                out.append(m)
        return out
    if os.path.isdir(p):
        return folder.find_images(Path(p))
    if os.path.isfile(p):
        return [p]  # named explicitly: decode whatever it is, and report it if it is no image
    raise DataError(f"{p}: no such file or folder")


def build_paths(paths: list[str], pre: Preprocess) -> Dataset:
    """Unlabelled images for ``predict``: files, folders (recursive) and globs; ids = the file paths."""
    files = list(dict.fromkeys(f for p in paths for f in expand_paths(str(p))))  # dedupe, keep order
    if not files:
        raise DataError(f"no image files match {', '.join(map(str, paths)) or '(nothing given)'}; "
                        f"give image files, folders or globs such as 'photos/*.jpg'")
    return ImageFiles([(f, -1) for f in files], files, eval_transform_for(pre), pre.mode, eval_decode_side(pre))


def prepare(data: str | Path, cfg: DataConfig, size: int | None = None, progress: bool = True) -> Packed:
    """``dogcat prepare``: build the packed cache of a data folder or list file, with the same files, labels
    and place that ``--cache`` training (or testing) on it will look for. ``size``: the stored side S (default
    the one ``cfg.image_size`` needs). The first layout (in detection order) that claims ``data`` lists them."""
    if size is not None and not 8 <= size <= 8192:
        raise DataError(f"--size={size} is out of range: allowed is an integer in [8, 8192] (the stored side)")
    src = Path(data).expanduser()
    if not (src.is_file() or src.is_dir()):
        raise DataError(f"{src}: no such folder or list file")
    samples = next((s for lay in layouts() if (s := lay.prepare_files(src)) is not None), None)
    if samples is None:
        raise DataError(f"{src}: no layout reads image files from it; layouts: {describe()}")
    crop = cfg.image_size if size is None else round(size * EVAL_CROP_RATIO)
    return ensure(samples, src, size or stored_side(cfg.image_size), crop, cfg.cache_dir, progress=progress)
