"""Datasets of dogcat: Kaggle Dogs vs. Cats, ImageFolder trees, Fashion-MNIST and list files.

Every dataset returns :class:`Item`; :func:`make_loader` collates them into :class:`Batch`, dropping
files that cannot be decoded (the main process reports them through :class:`BadFiles`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig
from ..preprocess import Preprocess
from . import fashion_mnist, folder, kaggle, listfile
from .arrays import ArrayImages
from .cache import Packed, ensure, packed_dataset, stored_side
from .fashion_mnist import FashionMNIST
from .images import (BadFiles, BadImageWarning, Batch, DataError, ImageFiles, Item, collate_items, decode_image,
                     is_image_file)
from .loader import ResumableSampler, SeededItems, ShardSampler, make_loader, resolve_workers
from .split import check_val_split, stratified_split, write_splits
from .transforms import (FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, IMAGENET_STD, BatchNormalize, BatchPadCropFlip,
                         CropFlipBatch, EvalBatch, eval_transform, keep_uint8, squash_transform, train_transform)

__all__ = [
    "KINDS", "DataError", "Item", "Batch", "collate_items", "BadFiles", "BadImageWarning", "DataBundle",
    "detect_kind", "build_train_val", "build_test", "build_paths", "prepare", "write_splits", "make_loader",
    "ArrayImages", "Packed",
    "resolve_workers", "ResumableSampler", "SeededItems", "ShardSampler", "ImageFiles", "FashionMNIST",
    "decode_image", "stratified_split",
    "train_transform", "eval_transform", "IMAGENET_MEAN", "IMAGENET_STD", "FMNIST_MEAN", "FMNIST_STD",
]

KINDS = ("kaggle", "folder", "fashion-mnist", "list")
LAYOUTS = ("Kaggle Dogs vs. Cats (train/cat.0.jpg, train/dog.0.jpg, ...); class subfolders "
           "(root/<class>/<image>.jpg); Fashion-MNIST IDX files; or a list file via --train-list")

Samples = list[tuple[str, int]]


@dataclass
class DataBundle:
    """Training and validation sets with what a model and a run need to know about them."""

    train: Dataset | None
    val: Dataset | None  # None when val_split == 0 and there is no val folder / list
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str
    splits: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # for the split files
    # in-memory and cached training sets yield uint8 batches; this (augments and) normalises them on the
    # device (the trainer applies it right after moving a batch there); (images, Batch.seed) -> images
    batch_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    size: int = 0  # the network input side

    @property
    def pre(self) -> Preprocess:
        """What a model trained on this data expects (stored in its checkpoint)."""
        return Preprocess(tuple(self.class_names), self.in_chans, tuple(self.mean), tuple(self.std), self.size,
                          "squash" if self.in_chans == 1 else "crop")


def _missing_root(root: Path) -> DataError:
    return DataError(
        f"training data folder {root} does not exist. For a quick demo run "
        f"`dogcat train --config=configs/fashion-mnist.yaml`; for Dogs vs. Cats download train.zip and "
        f"test1.zip from https://www.kaggle.com/c/dogs-vs-cats/data, unzip them and pass "
        f"--train-data-root=DIR/train --test-data-root=DIR/test1")


def detect_kind(cfg: DataConfig) -> str:
    """``cfg.dataset`` unless "auto"; else guessed from ``train_list`` / ``train_data_root``."""
    if cfg.dataset != "auto":
        if cfg.dataset not in KINDS:
            raise DataError(f"--dataset={cfg.dataset!r} is not one of: auto, {', '.join(KINDS)}")
        return cfg.dataset
    if cfg.train_list:
        return "list"
    if not cfg.train_data_root:
        raise DataError(f"no training data: pass --train-data-root=DIR or --train-list=FILE; layouts: {LAYOUTS}")
    root = Path(cfg.train_data_root).expanduser()
    if not root.exists():
        raise _missing_root(root)
    if not root.is_dir():
        raise DataError(f"--train-data-root={root} is a file, not a folder (a list file? use --train-list)")
    if fashion_mnist.has_idx(root):
        return "fashion-mnist"
    if kaggle.is_kaggle_train(root / "train"):  # else its train/ and test/ would pass for two classes
        raise DataError(f"{root} looks like the Kaggle download folder: pass --train-data-root={root / 'train'} "
                        f"--test-data-root={root / 'test'} (or test1)")
    if kaggle.is_kaggle_train(root):
        return "kaggle"
    if folder.has_class_folders(root):
        return "folder"
    raise DataError(f"{root}: no known data layout. Supported: {LAYOUTS}")


def _split(samples: Samples, ids: list[str], cfg: DataConfig
           ) -> tuple[tuple[Samples, list[str]], tuple[Samples, list[str]] | None]:
    """Hold out a stratified val part of the training samples (None when val_split is 0)."""
    if cfg.val_split == 0:
        return (samples, ids), None
    tr, va = stratified_split([y for _, y in samples], cfg.val_split, cfg.split_seed,
                              keys=[p for p, _ in samples])
    return ([samples[i] for i in tr], [ids[i] for i in tr]), ([samples[i] for i in va], [ids[i] for i in va])


def _image_sets(cfg: DataConfig, kind: str) -> tuple[tuple[Samples, list[str]], tuple[Samples, list[str]] | None,
                                                      list[str]]:
    """(train samples, ids), optional (val samples, ids) and class names for the image-file kinds."""
    if kind == "list":
        if not cfg.train_list:
            raise DataError("--dataset=list needs --train-list=FILE (CSV 'path,label' or 'path label' lines)")
        samples, names, ids = listfile.load(cfg.train_list)
        val = None
        if cfg.val_list:
            vs, _, vids = listfile.load(cfg.val_list, names)
            val = (vs, vids)
        return (samples, ids), val, names
    if not cfg.train_data_root:
        raise DataError(f"--dataset={kind} needs --train-data-root=DIR")
    root = Path(cfg.train_data_root).expanduser()
    scan = kaggle.scan_train if kind == "kaggle" else folder.scan
    if not root.is_dir():
        raise _missing_root(root)
    samples, names = scan(root)
    val = None
    if cfg.val_data_root:
        vroot = Path(cfg.val_data_root).expanduser()
        if not vroot.is_dir():
            raise DataError(f"--val-data-root={vroot}: no such folder")
        vs, _ = scan(vroot, names)
        val = (vs, [folder.rel_id(p, vroot) for p, _ in vs])
    return (samples, [folder.rel_id(p, root) for p, _ in samples]), val, names


def _fmnist_images(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as one uint8 tensor, resized once (not per item and epoch) to ``image_size``."""
    root = fashion_mnist.resolve_root(cfg.fashion_mnist_root, cfg.train_data_root)
    images, labels = fashion_mnist.load_split(root, split)
    if cfg.image_size != images.shape[-1]:
        images = TF.resize(images, [cfg.image_size, cfg.image_size], antialias=True)
    return images, labels


def _fmnist_bundle(cfg: DataConfig) -> DataBundle:
    images, labels = _fmnist_images(cfg, "train")
    ys = labels.tolist()
    if cfg.val_split == 0:
        tr, va = list(range(len(ys))), []
    else:
        tr, va = stratified_split(ys, cfg.val_split, cfg.split_seed)
    # training batches stay uint8 until the device: padded crop (4 px at 28) + flip there, per batch
    pad = cfg.image_size // 7 if cfg.augment == "default" else 0
    augment = BatchPadCropFlip(pad, cfg.augment != "none", FMNIST_MEAN, FMNIST_STD)
    train = FashionMNIST(images, labels, tr, "train", keep_uint8)
    val = FashionMNIST(images, labels, va, "train", EvalBatch(None, FMNIST_MEAN, FMNIST_STD)) if va else None
    splits = {"train": [(f"fashion-mnist/train/{i}", ys[i]) for i in tr]}
    if va:
        splits["val"] = [(f"fashion-mnist/train/{i}", ys[i]) for i in va]
    return DataBundle(train, val, list(fashion_mnist.CLASS_NAMES), 1, FMNIST_MEAN, FMNIST_STD,
                      "fashion-mnist", splits, augment, cfg.image_size)


def _sources(cfg: DataConfig, kind: str) -> tuple[str | None, str | None]:
    """The folders or list files the train and (separate) val samples come from: where their caches live."""
    if kind == "list":
        return cfg.train_list, cfg.val_list
    return cfg.train_data_root, cfg.val_data_root


def _packed(cfg: DataConfig, samples: Samples, source: str | None, processes: int = 1) -> Packed:
    """The packed cache of ``samples`` (built on first use, by one process: the others wait for it), in RAM
    when it fits ``in_memory_mb`` and this is the only process; with several (DDP) every process memory-maps
    it, so the page cache holds one copy instead of one per process."""
    assert source is not None
    size = stored_side(cfg.image_size)
    return ensure(samples, source, size, cfg.image_size, cfg.cache_dir).load(cfg.in_memory_mb if processes == 1 else 0)


def build_train_val(cfg: DataConfig, processes: int = 1) -> DataBundle:
    """Train set (train transform) and val set (eval transform) of the configured data; ``processes``: how
    many training processes read it (DDP), see :func:`_packed`."""
    kind = detect_kind(cfg)
    check_val_split(cfg.val_split)
    if kind == "fashion-mnist":
        return _fmnist_bundle(cfg)
    (samples, ids), val, names = _image_sets(cfg, kind)
    if len(names) < 2:
        raise DataError(f"the training data has {len(names)} class(es) {names}; a classifier needs at least 2")
    train_src, val_src = _sources(cfg, kind)
    packed = _packed(cfg, samples, train_src, processes) if cfg.cache else None  # all of it: any split reuses it
    val_packed = _packed(cfg, val[0], val_src, processes) if cfg.cache and val is not None else packed
    if val is None:
        (samples, ids), val = _split(samples, ids, cfg)
    size, mean, std = cfg.image_size, IMAGENET_MEAN, IMAGENET_STD
    threads = max(1, resolve_workers(cfg.num_workers))  # array data loads on threads, not processes
    if packed is not None and val_packed is not None:
        train: Dataset = packed_dataset(packed, samples, ids, CropFlipBatch(size, cfg.augment, threads=threads))
        val_set = packed_dataset(val_packed, *val, EvalBatch(size, mean, std, threads)) if val else None
    else:  # decode JPEGs no larger than the transforms need (see decode_image)
        side, tf = stored_side(size), train_transform(size, mean, std, cfg.augment, normalize=False)
        train = ImageFiles(samples, ids, tf, min_short=side)
        val_set = ImageFiles(val[0], val[1], eval_transform(size, mean, std), min_short=side) if val else None
    batch_transform = BatchNormalize(mean, std, threads)  # training crops leave the loader as uint8
    splits = {"train": list(samples)}
    if val:
        splits["val"] = list(val[0])
    return DataBundle(train, val_set, names, 3, mean, std, kind, splits, batch_transform, cfg.image_size)


def _eval_tf(size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> tuple[Callable, str, int]:
    """Eval transform, PIL mode and the short side to decode at least, for image files; 1 channel = a
    Fashion-MNIST model: squash to size."""
    if in_chans == 1:
        return squash_transform(size, tuple(mean), tuple(std)), "L", size
    return eval_transform(size, tuple(mean), tuple(std)), "RGB", stored_side(size)


def build_test(cfg: DataConfig, kind: str, class_names: list[str], in_chans: int,
               mean: tuple, std: tuple) -> Dataset:
    """Test set with eval transforms: Fashion-MNIST t10k (labelled), ``test_list``, or ``test_data_root``."""
    if kind == "fashion-mnist":
        images, labels = _fmnist_images(cfg, "test")
        return FashionMNIST(images, labels, range(len(labels)), "test", EvalBatch(None, tuple(mean), tuple(std)))
    tf, mode, min_short = _eval_tf(cfg.image_size, in_chans, mean, std)
    if cfg.test_list:
        samples, _, ids = listfile.load(cfg.test_list, class_names, need_labels=False)
    else:
        if not cfg.test_data_root:
            raise DataError("no test data: pass --test-data-root=DIR or --test-list=FILE")
        samples, ids = folder.scan_test(Path(cfg.test_data_root).expanduser(), class_names)
    if cfg.cache and in_chans == 3:
        packed = _packed(cfg, samples, cfg.test_list or cfg.test_data_root)
        threads = max(1, resolve_workers(cfg.num_workers))
        return packed_dataset(packed, samples, ids, EvalBatch(cfg.image_size, tuple(mean), tuple(std), threads))
    return ImageFiles(samples, ids, tf, mode, min_short)


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


def build_paths(paths: list[str], image_size: int, in_chans: int, mean: tuple, std: tuple) -> Dataset:
    """Unlabelled images for ``predict``: files, folders (recursive) and globs; ids = the file paths."""
    files = list(dict.fromkeys(f for p in paths for f in expand_paths(str(p))))  # dedupe, keep order
    if not files:
        raise DataError(f"no image files match {', '.join(map(str, paths)) or '(nothing given)'}; "
                        f"give image files, folders or globs such as 'photos/*.jpg'")
    tf, mode, min_short = _eval_tf(image_size, in_chans, mean, std)
    return ImageFiles([(f, -1) for f in files], files, tf, mode, min_short)


def prepare(data: str | Path, cfg: DataConfig, size: int | None = None, progress: bool = True) -> Packed:
    """``dogcat prepare``: build the packed cache of a data folder or list file, with the same files, labels
    and place that ``--cache`` training (or testing) on it will look for. ``size``: the stored side S (default
    the one ``cfg.image_size`` needs)."""
    if size is not None and not 8 <= size <= 8192:
        raise DataError(f"--size={size} is out of range: allowed is an integer in [8, 8192] (the stored side)")
    src = Path(data).expanduser()
    if src.is_file():
        samples, _, _ = listfile.load(src, need_labels=False)
    elif not src.is_dir():
        raise DataError(f"{src}: no such folder or list file")
    elif fashion_mnist.has_idx(src):
        raise DataError(f"{src} holds Fashion-MNIST, which is always held in memory: nothing to prepare")
    elif kaggle.is_kaggle_train(src):
        samples, _ = kaggle.scan_train(src)
    elif folder.has_class_folders(src) and not kaggle.is_kaggle_test(src):
        samples, _ = folder.scan(src)
    else:  # a test folder: Kaggle's numbered files, or any images
        samples, _ = folder.scan_test(src, list(folder.class_folders(src)))
    crop = cfg.image_size if size is None else round(size * 0.875)
    return ensure(samples, src, size or stored_side(cfg.image_size), crop, cfg.cache_dir, progress=progress)
