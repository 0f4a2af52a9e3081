"""The image-file pipeline every photo layout shares: ``(path, label)`` samples become :class:`ImageFiles` (or
datasets over their packed cache), with the train/val split, the test set and the data fingerprint.

A layout of image files subclasses :class:`ImageLayout` and says only how it finds its files: ``scan`` (a
folder's samples and class names) or all of ``train_files``, plus ``test_files`` when it reads test data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import DataConfig
from ..preprocess import Preprocess
from .augment import BatchPolicy
from .cache import Packed, ensure, packed_dataset
from .images import DataError, ImageFiles
from .layout import DataBundle, Layout, Samples, layouts, missing_root
from .loader import resolve_workers
from .split import stratified_split
from .transforms import (BatchNormalize, CropFlipBatch, EvalBatch, eval_decode_side, eval_transform_for,
                         train_transform)


@dataclass
class Files:
    """Image files of one set: samples, their ids, and the folder or list file they were read from (their
    packed cache lives next to it)."""

    samples: Samples
    ids: list[str]
    source: str


def rel_id(path: str, root: Path) -> str:
    """The path relative to ``root`` without extension, with forward slashes: a stable, readable id."""
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        rel = path
    return os.path.splitext(rel)[0].replace(os.sep, "/")


class ImageLayout(Layout):
    """A layout of image files: photos, RGB, ImageNet statistics (:meth:`Layout.preprocess`)."""

    def scan(self, root: Path, classes: list[str] | None = None) -> tuple[Samples, list[str]]:
        """``([(path, label)], class names)`` of a folder; with ``classes`` given (a val folder), labels map
        through them and an unknown class is a DataError."""
        raise NotImplementedError

    def train_files(self, cfg: DataConfig) -> tuple[Files, Files | None, list[str]]:
        """Training files, the separate validation files (None: split them off) and the class names; by
        default :meth:`scan` of the two :meth:`sources` folders."""
        src, val_src = self.sources(cfg)
        if not src:
            raise DataError(f"--dataset={self.name} needs --train-data-root=DIR")
        root = Path(src).expanduser()
        if not root.is_dir():
            raise missing_root(root)
        samples, names = self.scan(root)
        val = None
        if val_src:
            vroot = Path(val_src).expanduser()
            if not vroot.is_dir():
                raise DataError(f"--val-data-root={vroot}: no such folder")
            vs, _ = self.scan(vroot, names)
            val = Files(vs, [rel_id(p, vroot) for p, _ in vs], val_src)
        return Files(samples, [rel_id(p, root) for p, _ in samples], src), val, names

    def test_files(self, cfg: DataConfig, classes: list[str]) -> Files | None:
        """The test files this layout reads from ``cfg`` (labels through ``classes``, -1 when unknown), or None
        when the test data is none of its business. Any image layout's model is tested on whichever layout
        claims the test data first (see :func:`image_test_set`)."""
        return None

    def train_val(self, cfg: DataConfig, processes: int = 1) -> DataBundle:
        train, val, names = self.train_files(cfg)
        if len(names) < 2:
            raise DataError(f"the training data has {len(names)} class(es) {names}; a classifier needs at least 2")
        pre = self.preprocess(names, cfg.image_size)
        if cfg.task == "multilabel":
            pre = dataclasses.replace(pre, task="multilabel")
        return image_bundle(cfg, self.name, pre, train, val, processes)

    def test_set(self, cfg: DataConfig, pre: Preprocess) -> Dataset:
        return image_test_set(cfg, pre)

    def fingerprint(self, bundle: DataBundle, cfg: DataConfig) -> dict[str, Any]:
        """sha256 over the sorted (relative path, size, label) of the training and validation files. Files
        are not read (fast on 25,000 JPEGs): an edit that keeps a file's size is not seen, a changed, added,
        removed or relabelled one is."""
        rows = [(os.path.abspath(p), bundle.pre.label_text(y)) for part in ("train", "val")
                for p, y in bundle.splits.get(part, [])]
        base = os.path.commonpath([p for p, _ in rows]) if rows else ""
        if rows and os.path.isfile(base):
            base = os.path.dirname(base)
        lines = []
        for p, label in rows:
            try:
                size = os.path.getsize(p)
            except OSError:
                size = -1  # a missing file is part of what the data is
            lines.append(f"{os.path.relpath(p, base)}\t{size}\t{label}")
        digest = hashlib.sha256("\n".join(sorted(lines)).encode("utf-8", "surrogateescape")).hexdigest()
        return {"sha256": digest, "method": "sha256 of sorted (relative path, size, label)", "root": base,
                "count": len(rows)}


def packed_cache(cfg: DataConfig, samples: Samples, source: str, pre: Preprocess, processes: int = 1) -> Packed:
    """The packed cache of ``samples`` for ``pre``'s network input (S = its ``resize_to``, so its crop fraction;
    the cache's own resize is bilinear) (built on first use, by one process: the others wait for it), in RAM
    when it fits ``in_memory_mb`` and this is the only process; with several (DDP) every process memory-maps
    it, so the page cache holds one copy instead of one per process."""
    return ensure(samples, source, pre.resize_to, pre.size, cfg.cache_dir).load(cfg.in_memory_mb if processes == 1 else 0)


def split_off(files: Files, cfg: DataConfig) -> tuple[Files, Files | None]:
    """Hold out a stratified val part of the training files (None when val_split is 0)."""
    if cfg.val_split == 0:
        return files, None
    s, ids = files.samples, files.ids
    tr, va = stratified_split([y for _, y in s], cfg.val_split, cfg.split_seed, keys=[p for p, _ in s])
    return (Files([s[i] for i in tr], [ids[i] for i in tr], files.source),
            Files([s[i] for i in va], [ids[i] for i in va], files.source))


def image_bundle(cfg: DataConfig, layout: str, pre: Preprocess, train: Files, val: Files | None,
                 processes: int = 1) -> DataBundle:
    """Train set (train transform) and val set (eval transform) of image files; ``processes``: how many
    training processes read them (DDP), see :func:`packed_cache`."""
    size = pre.size
    packed = packed_cache(cfg, train.samples, train.source, pre, processes) if cfg.cache else None  # all of it
    val_packed = packed_cache(cfg, val.samples, val.source, pre, processes) if cfg.cache and val else packed
    if val is None:
        train, val = split_off(train, cfg)
    threads = max(1, resolve_workers(cfg.num_workers))  # array data loads on threads, not processes
    policy = None  # a preset / random erasing: per sample for image files, per batch on the device for the cache
    if packed is not None and val_packed is not None:
        train_set: Dataset = packed_dataset(packed, train.samples, train.ids,
                                            CropFlipBatch(size, cfg.augment, threads=threads))
        val_set = packed_dataset(val_packed, val.samples, val.ids, EvalBatch(size, pre.mean, pre.std, threads)) \
            if val else None
        policy = BatchPolicy(cfg.augment, cfg.random_erasing, pre.mean)
    else:  # decode JPEGs no larger than the transforms need (see decode_image)
        tf = train_transform(size, pre.mean, pre.std, cfg.augment, normalize=False, erasing=cfg.random_erasing,
                             interpolation=pre.interpolation, crop_pct=pre.crop_pct)
        train_set = ImageFiles(train.samples, train.ids, tf, pre.mode, pre.resize_to)
        val_set = ImageFiles(val.samples, val.ids, eval_transform_for(pre), pre.mode, eval_decode_side(pre)) \
            if val else None
    batch_transform = BatchNormalize(pre.mean, pre.std, threads, policy)  # training crops leave the loader as uint8
    splits = {"train": list(train.samples)}
    if val:
        splits["val"] = list(val.samples)
    return DataBundle(train_set, val_set, pre, layout, splits, batch_transform)


def image_files_set(cfg: DataConfig, pre: Preprocess, files: Files) -> Dataset:
    """Image files with ``pre``'s eval transform: from their packed cache with ``--cache`` (RGB crops only)."""
    if cfg.cache and pre.in_chans == 3 and pre.resize == "crop":
        threads = max(1, resolve_workers(cfg.num_workers))
        packed = packed_cache(cfg, files.samples, files.source, pre)
        return packed_dataset(packed, files.samples, files.ids, EvalBatch(pre.size, pre.mean, pre.std, threads))
    return ImageFiles(files.samples, files.ids, eval_transform_for(pre), pre.mode, eval_decode_side(pre))


def image_test_set(cfg: DataConfig, pre: Preprocess) -> Dataset:
    """The test images of a model of image files: those of the first layout that claims the test data
    (:meth:`ImageLayout.test_files`, in detection order: ``--test-list``, then ``--test-data-root``)."""
    for lay in layouts():
        files = lay.test_files(cfg, list(pre.classes)) if isinstance(lay, ImageLayout) else None
        if files is not None:
            return image_files_set(cfg, pre, files)
    raise DataError("no test data: pass --test-data-root=DIR or --test-list=FILE")
