"""Data given in Python rather than named by options: ``dogcat.train(train_data=..., val_data=...)`` with a torch
``Dataset`` or a pandas ``DataFrame`` (the habits of Lightning and fastai users); and :func:`as_image`, the one
rule for what counts as a picture in memory (PIL image, numpy HWC array, CHW tensor), shared with ``predict``.

Decisions, written once here:

- **A DataFrame** holds one image file per row: a path column and a label column (``path`` and ``label``
  unless told otherwise). It is the list-file layout in memory: rows become the same ``(path, label)`` samples
  (relative paths are taken from the current folder), classes are the sorted distinct labels (integers
  numerically) unless ``classes=`` lists them, and the run records them as list files (``RUN/splits/*.csv``,
  pointed to by ``train_list`` / ``val_list`` in its config), so resume, ``dogcat val`` and ``dogcat runs`` work
  on the run as on any list-file run. pandas is never imported: any object with ``columns`` and ``[name]``
  columns that have ``tolist()`` works.
- **A torch Dataset** returns ``(image, label)``: the image a PIL image, a numpy HWC uint8 array or a CHW tensor
  (uint8, or float in [0, 1]); the label a class index (or a class name from ``classes``). dogcat preprocesses
  the image exactly as it does a file (random resized crop + flip for training, resize + centre crop for
  validation, the model's normalisation), so ``predict`` on files later sees what training saw. Give images,
  not normalised tensors: a dataset that normalises itself would be normalised twice. Classes come from
  ``classes=``, else from the dataset's ``classes`` attribute (torchvision's datasets have one). Without
  ``val_data``, ``val_split`` holds out a part (stratified when the dataset has ``targets``). Such a run is
  recorded as ``dataset: python``: a layout that reads nothing from options, so resuming needs the dataset
  again (``dogcat.train(resume=RUN, train_data=ds, ...)``) and ``dogcat val RUN`` says so in one line.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .images import DataError, Item
from .layout import DataBundle, Layout, register_layout
from .listfile import class_names_of, to_index
from .loader import resolve_workers
from .pipeline import Files, image_bundle
from .split import stratified_split
from .transforms import BatchNormalize, eval_transform_for, train_transform

GIVEN = "python"  # the layout name a run trained on a torch Dataset records


def as_image(x: Any, mode: str | None = None, where: str = "input") -> torch.Tensor:
    """A picture in memory as a uint8 CHW tensor: a PIL image (converted to ``mode``, "RGB" or "L", when
    given), a numpy array HWC (or HW) uint8 (or float in [0, 1]), or a tensor CHW uint8 (or float in [0, 1]).
    Anything else, or a float outside [0, 1], is one DataError line naming ``where``."""
    if isinstance(x, Image.Image):
        return TF.pil_to_tensor(x.convert(mode) if mode else x)
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
            raise DataError(f"{where}: a numpy array of shape {x.shape}; give an HWC image (H x W x 1, 3 or 4)")
        t = torch.tensor(x[:, :, :3] if x.shape[2] == 4 else x).permute(2, 0, 1)  # a copy: the array may be read-only
    elif isinstance(x, torch.Tensor):
        if x.ndim != 3:
            raise DataError(f"{where}: a tensor of shape {tuple(x.shape)}; give a CHW image")
        t = x.detach().cpu()
    else:
        raise DataError(f"{where} is a {type(x).__name__}; give a PIL image, a numpy HWC array or a CHW tensor")
    if t.dtype != torch.uint8:
        if not t.is_floating_point():
            raise DataError(f"{where}: pixels of type {t.dtype}; give uint8, or floats in [0, 1]")
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: float pixels in [{lo:.3g}, {hi:.3g}]; give floats in [0, 1] (not normalised: "
                            "dogcat normalises) or uint8")
        t = (t.float() * 255).round_().to(torch.uint8)
    return t


def match_channels(t: torch.Tensor, in_chans: int, where: str) -> torch.Tensor:
    """``t`` with ``in_chans`` channels: grey copied to RGB, RGB averaged to grey (ITU-R 601 weights)."""
    if t.shape[0] == in_chans:
        return t
    if t.shape[0] == 1 and in_chans == 3:
        return t.expand(3, -1, -1)
    if t.shape[0] == 3 and in_chans == 1:
        return TF.rgb_to_grayscale(t)
    raise DataError(f"{where}: an image with {t.shape[0]} channels; the model takes {in_chans}")


class GivenImages(Dataset):
    """The rows ``indices`` of a user's ``(image, label)`` dataset as dogcat :class:`Item` s, each image through
    ``transform`` (uint8 CHW in). Ids and paths are ``dataset/<index>`` (the rows of the split files)."""

    def __init__(self, dataset: Any, indices: Sequence[int], transform: Any, in_chans: int,
                 classes: Sequence[str], labels: Sequence[int] | None = None, name: str = "train_data") -> None:
        self.dataset, self.indices, self.transform, self.name = dataset, list(indices), transform, name
        self.in_chans, self.classes = in_chans, list(classes)
        self._labels = [labels[i] for i in self.indices] if labels is not None else None

    @property
    def targets(self) -> list[int] | None:
        """Labels in order when the dataset says them (``targets``): class counts, balanced sampling."""
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        index = self.indices[i]
        where = f"{self.name}[{index}]"
        image, label = read_item(self.dataset, index, self.classes, self.name)
        return Item(self.transform(match_channels(as_image(image, where=where), self.in_chans, where)), label,
                    str(index), f"dataset/{index}", None)


def read_item(dataset: Any, index: int, classes: Sequence[str], name: str = "train_data") -> tuple[Any, int]:
    """``dataset[index]`` as ``(image, class index)``; another shape or an unknown label is one DataError line."""
    item = dataset[index]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{name}[{index}] is a {type(item).__name__}; a dataset for dogcat.train returns "
                        "(image, label)")
    image, label = item[0], item[1]
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= int(label) < len(classes):
        return image, int(label)
    if isinstance(label, str) and label in classes:
        return image, list(classes).index(label)
    raise DataError(f"{name}[{index}]: label {label!r} is not a class index in [0, {len(classes)}) or one of "
                    f"the class names {list(classes)}")


@register_layout(GIVEN)
class GivenLayout(Layout):
    doc = "a torch Dataset given in Python: dogcat.train(train_data=dataset)"
    priority = 1000
    real_paths = False

    def train_val(self, cfg: DataConfig, processes: int = 1) -> DataBundle:
        raise DataError("this run trained on a torch Dataset given in Python (dataset: python), which a config "
                        "cannot name: pass it again, dogcat.train(resume=RUN, train_data=..., val_data=...)")


def is_frame(x: Any) -> bool:
    """A pandas DataFrame, or anything shaped like one (``columns`` and columns with ``tolist()``)."""
    return hasattr(x, "columns") and hasattr(x, "__getitem__") and not isinstance(x, Dataset)


def frame_rows(frame: Any, path_column: str, label_column: str, what: str) -> list[tuple[str, str]]:
    """``[(absolute path, label as text)]`` of a DataFrame's rows; a missing column or an empty frame is one line."""
    columns = [str(c) for c in frame.columns]
    for col in (path_column, label_column):
        if col not in columns:
            raise DataError(f"{what}: the DataFrame has no column {col!r} (columns: {columns}); name the columns "
                            f"with path_column= and label_column=")
    paths, labels = frame[path_column].tolist(), frame[label_column].tolist()
    if not paths:
        raise DataError(f"{what}: the DataFrame has no rows")
    rows = []
    for p, y in zip(paths, labels):
        if y is None or (isinstance(y, float) and y != y):
            raise DataError(f"{what}: the row of {p!r} has no label; every row needs one")
        rows.append((os.path.abspath(os.path.expanduser(str(p))), str(int(y)) if isinstance(y, (int, np.integer))
                     else str(y)))
    return rows


def frame_files(frame: Any, classes: list[str], what: str, path_column: str, label_column: str) -> Files:
    rows = frame_rows(frame, path_column, label_column, what)
    samples = [(p, to_index(y, classes, what)) for p, y in rows]
    base = os.path.commonpath([p for p, _ in samples])
    base = base if os.path.isdir(base) else os.path.dirname(base)
    ids = [os.path.splitext(os.path.relpath(p, base))[0].replace(os.sep, "/") for p, _ in samples]
    return Files(samples, ids, base)  # the cache of --cache lives next to the files' common folder


def _classes(given: Sequence[Any] | None, dataset: Any) -> list[str]:
    names = given if given is not None else getattr(dataset, "classes", None)
    if names is None:
        raise DataError("dogcat.train(train_data=dataset): name the classes, classes=['cat', 'dog'] (the dataset "
                        "has no 'classes' attribute)")
    names = [str(c) for c in names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"classes={names}: a classifier needs at least 2 distinct class names")
    return names


def given_bundle(cfg: DataConfig, train: Any, val: Any = None, classes: Sequence[Any] | None = None,
                 path_column: str = "path", label_column: str = "label") -> DataBundle:
    """The :class:`DataBundle` of ``train_data`` (and ``val_data``): DataFrames as list files (layout ``list``),
    torch Datasets through :class:`GivenImages` (layout ``python``). See the module's docstring."""
    if val is not None and is_frame(val) != is_frame(train):
        raise DataError("train_data and val_data must be of one kind: both DataFrames or both datasets")
    if is_frame(train):
        names = [str(c) for c in classes] if classes is not None else class_names_of(
            [y for _, y in frame_rows(train, path_column, label_column, "train_data")])
        if len(names) < 2:
            raise DataError(f"train_data: labels {names}; a classifier needs at least 2 classes")
        files = frame_files(train, names, "train_data", path_column, label_column)
        vfiles = frame_files(val, names, "val_data", path_column, label_column) if val is not None else None
        pre = Preprocess(tuple(names), 3, IMAGENET_MEAN, IMAGENET_STD, cfg.image_size, "crop")
        return image_bundle(cfg, "list", pre, files, vfiles)
    if not (hasattr(train, "__getitem__") and hasattr(train, "__len__")):
        raise DataError(f"train_data is a {type(train).__name__}; give a torch Dataset of (image, label), a pandas "
                        "DataFrame of paths and labels, or train_data_root= / train_list=")
    names = _classes(classes, train)
    if len(train) == 0:
        raise DataError("train_data is empty")
    first = as_image(read_item(train, 0, names)[0], where="train_data[0]")
    chans = 1 if first.shape[0] == 1 else 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,), (0.5,))
    pre = Preprocess(tuple(names), chans, mean, std, cfg.image_size, "crop")
    labels = [int(y) for y in train.targets] if getattr(train, "targets", None) is not None else None
    tr, va = list(range(len(train))), None
    if val is None and cfg.val_split > 0:
        tr, va = stratified_split(labels or [0] * len(train), cfg.val_split, cfg.split_seed)
    tf = train_transform(pre.size, mean, std, cfg.augment, normalize=False, erasing=cfg.random_erasing)
    train_set = GivenImages(train, tr, tf, chans, names, labels)
    val_set = None
    if val is not None:
        vlabels = [int(y) for y in val.targets] if getattr(val, "targets", None) is not None else None
        val_set = GivenImages(val, range(len(val)), eval_transform_for(pre), chans, names, vlabels, "val_data")
    elif va:
        val_set = GivenImages(train, va, eval_transform_for(pre), chans, names, labels)
    splits = {"train": [(f"dataset/{i}", y) for i, y in zip(tr, train_set.targets or [0] * len(tr))]}
    if val_set is not None:
        splits["val"] = [(f"dataset/{i}", y) for i, y in zip(val_set.indices, val_set.targets or [0] * len(val_set))]
    threads = max(1, resolve_workers(cfg.num_workers))
    return DataBundle(train_set, val_set, pre, GIVEN, splits, BatchNormalize(mean, std, threads))
