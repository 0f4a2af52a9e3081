"""Fashion-MNIST from its IDX files, held in memory as one uint8 tensor (N, 1, 28, 28).

Where the files come from, first hit wins: ``--fashion-mnist-root``; ``--train-data-root`` when it holds
IDX files; Debian's ``dataset-fashion-mnist`` package; a torchvision download into ``~/.cache/dogcat``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig
from ..io import sha256_file
from ..reading import NotRegular, open_regular
from ..preprocess import FMNIST_MEAN, FMNIST_STD, Preprocess
from .arrays import ArrayImages
from .augment import BatchPolicy, geometry
from .images import DataError
from .layout import DataBundle, Layout, Samples, register_layout, train_root
from .split import stratified_split
from .transforms import BatchPadCropFlip, EvalBatch, keep_uint8

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = Path("~/.cache/dogcat").expanduser()
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
              "IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
              "t10k-labels-idx1-ubyte.gz, gzipped or not) in a folder and pass --fashion-mnist-root=DIR")


def _find(folder: Path, stem: str) -> Path | None:
    # torchvision's download keeps the files in <root>/FashionMNIST/raw: accept that folder too
    for d in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def has_idx(folder: Path, split: str = "train") -> bool:
    return all(_find(folder, stem) is not None for stem in FILES[split])


MAX_IDX_BYTES = 1 << 30  # 1 GiB: Fashion-MNIST's largest file is 47 MB; a gzip bomb stops here


def read_idx(path: Path, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or raw): big-endian magic 0x0000080D, D = ndim. The header's
    size is checked against ``limit`` before the data is read, and no more than that is ever decompressed."""
    try:
        with open_regular(path) as raw, (gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
            dims = f.read(4 * head[3])
            if len(dims) != 4 * head[3]:
                raise DataError(f"{path}: the header is cut short; the file is damaged")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            size = math.prod(shape)
            if size > limit:
                raise DataError(f"{path}: its header announces {size:,} bytes of data, more than the "
                                f"{limit:,} allowed; not a Fashion-MNIST file")
            data = f.read(size + 1)
    except (OSError, EOFError, zlib.error, NotRegular) as e:
        raise DataError(f"{path}: cannot read ({e}); download it again") from e
    if len(data) != size:
        raise DataError(f"{path}: size does not match its header {shape}; the file is damaged")
    return np.frombuffer(data, np.uint8).reshape(shape)


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N,1,28,28), labels int64 (N,))`` of ``split`` ("train" or "test")."""
    img_file, lbl_file = (_find(folder, stem) for stem in FILES[split])
    if img_file is None or lbl_file is None:
        raise DataError(f"{folder}: missing Fashion-MNIST {split} files; {HOW_TO_GET}")
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    if len(images) == 0 or 0 in images.shape[1:]:
        raise DataError(f"{img_file}: holds no images (shape {images.shape}); not a Fashion-MNIST file")
    if int(labels.max()) >= len(CLASS_NAMES):
        bad = int((labels >= len(CLASS_NAMES)).sum())
        raise DataError(f"{lbl_file}: {bad} label(s) outside 0-{len(CLASS_NAMES) - 1} (the largest is "
                        f"{int(labels.max())}): Fashion-MNIST has {len(CLASS_NAMES)} classes; the file is damaged")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _download() -> Path:
    """Fetch with torchvision into CACHE_ROOT; looked up at call time so tests can replace it."""
    import torchvision.datasets

    # one call fetches all four files, whatever ``train`` says
    torchvision.datasets.FashionMNIST(root=str(CACHE_ROOT), train=True, download=True)
    return CACHE_ROOT / "FashionMNIST" / "raw"


def resolve_root(explicit: str | None, train_root: str | None = None) -> Path:
    """Find a folder with all four IDX files (see the module docstring), or raise a DataError."""
    if explicit:
        root = Path(explicit).expanduser()
        if not (has_idx(root, "train") and has_idx(root, "test")):
            raise DataError(f"--fashion-mnist-root={explicit}: the four IDX files are not there; {HOW_TO_GET}")
        return root
    candidates = [Path(train_root).expanduser()] if train_root else []
    candidates += [DEBIAN_ROOT, CACHE_ROOT]
    for root in candidates:
        if has_idx(root, "train") and has_idx(root, "test"):
            return root
    try:
        root = _download()
    except Exception as e:  # no network, proxy, disk full: all end in the same advice
        raise DataError(f"Fashion-MNIST not found (looked in {', '.join(map(str, candidates))}) and the "
                        f"download failed ({type(e).__name__}: {e}). To fix: {HOW_TO_GET}") from e
    if not (has_idx(root, "train") and has_idx(root, "test")):
        raise DataError(f"Fashion-MNIST download into {root} is incomplete; {HOW_TO_GET}")
    return root


class FashionMNIST(ArrayImages):
    """Items of the in-memory uint8 tensor ``images`` (N, 1, H, W), shared by the train and val subsets.

    ``index`` holds each item's position in its IDX file: the item's id and path. Batches are cut by index
    (see :class:`ArrayImages`); ``prepare`` finishes each batch (``keep_uint8`` for training, whose
    augmentation runs on the device, ``EvalBatch`` for evaluation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, index: Sequence[int], split: str,
                 prepare: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
        self.index = [int(i) for i in index]
        self.split = split
        ys = labels.tolist()
        samples = [(f"fashion-mnist/{split}/{i}", ys[i]) for i in self.index]
        super().__init__(images.permute(0, 2, 3, 1), self.index, samples, [str(i) for i in self.index], prepare)

    @property
    def labels(self) -> list[int]:
        return self.targets

    def path(self, i: int) -> str:
        return self.samples[i][0]


def _images(cfg: DataConfig, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as one uint8 tensor, resized once (not per item and epoch) to ``size``."""
    images, labels = load_split(resolve_root(cfg.fashion_mnist_root, cfg.train_data_root), split)
    if size != images.shape[-1]:
        images = TF.resize(images, [size, size], antialias=True)
    return images, labels


@register_layout("fashion-mnist")
class FashionMNISTLayout(Layout):
    """Held in memory; training batches are augmented on the device (padded crop + flip, per batch)."""

    doc = "Fashion-MNIST IDX files (--fashion-mnist-root, or found / downloaded)"
    priority = 20
    real_paths = False  # split rows are pseudo-paths fashion-mnist/<split>/<index>: a record, not files
    native_size = 28

    def detect(self, cfg: DataConfig) -> bool:
        return has_idx(train_root(cfg))

    def sources(self, cfg: DataConfig) -> tuple[str | None, str | None]:
        return cfg.fashion_mnist_root, None

    def preprocess(self, classes: Sequence[str], size: int) -> Preprocess:
        return Preprocess(tuple(classes), 1, FMNIST_MEAN, FMNIST_STD, size, "squash")

    def train_val(self, cfg: DataConfig, processes: int = 1) -> DataBundle:
        pre = self.preprocess(CLASS_NAMES, cfg.image_size)
        images, labels = _images(cfg, "train", pre.size)
        ys = labels.tolist()
        if cfg.val_split == 0:
            tr, va = list(range(len(ys))), []
        else:
            tr, va = stratified_split(ys, cfg.val_split, cfg.split_seed)
        # training batches stay uint8 until the device: padded crop (4 px at 28) + flip (+ a preset) there, per batch
        pad = pre.size // 7 if geometry(cfg.augment) == "default" else 0
        augment = BatchPadCropFlip(pad, cfg.augment != "none", pre.mean, pre.std,
                                   BatchPolicy(cfg.augment, cfg.random_erasing, pre.mean))
        train = FashionMNIST(images, labels, tr, "train", keep_uint8)
        val = FashionMNIST(images, labels, va, "train", EvalBatch(None, pre.mean, pre.std)) if va else None
        splits = {"train": [(f"fashion-mnist/train/{i}", ys[i]) for i in tr]}
        if va:
            splits["val"] = [(f"fashion-mnist/train/{i}", ys[i]) for i in va]
        return DataBundle(train, val, pre, self.name, splits, augment)

    def test_set(self, cfg: DataConfig, pre: Preprocess) -> Dataset:
        """The labelled t10k images."""
        images, labels = _images(cfg, "test", pre.size)
        return FashionMNIST(images, labels, range(len(labels)), "test", EvalBatch(None, pre.mean, pre.std))

    def prepare_files(self, src: Path) -> Samples | None:
        if src.is_dir() and has_idx(src):
            raise DataError(f"{src} holds Fashion-MNIST, which is always held in memory: nothing to prepare")
        return None

    def fingerprint(self, bundle: DataBundle, cfg: DataConfig) -> dict[str, Any]:
        """sha256 over the training IDX files' own hashes."""
        root = resolve_root(cfg.fashion_mnist_root, cfg.train_data_root)
        files = {}
        for stem in FILES["train"]:
            path = _find(root, stem)
            if path is not None:
                files[path.name] = sha256_file(path)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"sha256": digest, "method": "sha256 of the IDX files", "root": str(root), "files": files,
                "count": sum(len(v) for v in bundle.splits.values())}
