"""Kaggle Dogs vs. Cats flat layout: ``train/<class>.<num>.<ext>`` and ``test/<num>.<ext>``.

Its test folder (numbered files) is one of the test-folder shapes ``folder.scan_test`` reads for any layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import DataConfig
from .images import DataError, is_image_file
from .layout import Samples, register_layout, train_root
from .pipeline import ImageLayout

TRAIN_NAME = re.compile(r"^(?P<cls>[^./\\]+)\.(?P<num>\d+)\.[A-Za-z]+$")
TEST_NAME = re.compile(r"^(?P<num>\d+)\.[A-Za-z]+$")


def _top_images(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_file() and is_image_file(e.name))


def is_kaggle_train(root: Path) -> bool:
    """True when at least half of the top-level image files are named ``<class>.<num>.<ext>``."""
    if not root.is_dir():
        return False
    names = _top_images(root)
    hits = sum(1 for n in names if TRAIN_NAME.match(n))
    return hits > 0 and 2 * hits >= len(names)


def is_kaggle_test(root: Path) -> bool:
    """True when the folder holds only ``<num>.<ext>`` images at the top (and no class subfolders)."""
    if not root.is_dir():
        return False
    names = _top_images(root)
    return bool(names) and all(TEST_NAME.match(n) for n in names)


def scan_train(root: Path, class_names: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(path, label)]`` sorted by path, and the class names (sorted, so cat=0, dog=1).

    With ``class_names`` given (a val folder), labels map through them and an unknown class is an error.
    Files not named ``<class>.<num>.<ext>`` are ignored.
    """
    named: list[tuple[str, str]] = []
    for name in _top_images(root):
        m = TRAIN_NAME.match(name)
        if m:
            named.append((str(root / name), m["cls"]))
    if not named:
        raise DataError(f"{root}: no images named <class>.<number>.<ext> (e.g. cat.0.jpg), "
                        f"the Kaggle Dogs vs. Cats layout")
    found = sorted({c for _, c in named})
    if class_names is None:
        class_names = found
    unknown = [c for c in found if c not in class_names]
    if unknown:
        raise DataError(f"{root}: classes {unknown} are not among the training classes {class_names}")
    index = {c: i for i, c in enumerate(class_names)}
    return [(p, index[c]) for p, c in named], class_names


def scan_test(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(path, -1)]`` and the numeric ids, sorted by number (1, 2, ..., 10, not 1, 10, 2)."""
    files = []
    for name in _top_images(root):
        m = TEST_NAME.match(name)
        if m:
            files.append((int(m["num"]), name))
    files.sort()
    return [(str(root / name), -1) for _, name in files], [str(num) for num, _ in files]


@register_layout("kaggle")
class KaggleLayout(ImageLayout):
    doc = "Kaggle Dogs vs. Cats flat folder (train/cat.0.jpg, train/dog.0.jpg, ...)"
    priority = 30

    def detect(self, cfg: DataConfig) -> bool:
        root = train_root(cfg)
        if is_kaggle_train(root / "train"):  # else its train/ and test/ would pass for two class folders
            raise DataError(f"{root} looks like the Kaggle download folder: pass --train-data-root={root / 'train'} "
                            f"--test-data-root={root / 'test'} (or test1)")
        return is_kaggle_train(root)

    def scan(self, root: Path, classes: list[str] | None = None) -> tuple[Samples, list[str]]:
        return scan_train(root, classes)

    def prepare_files(self, src: Path) -> Samples | None:
        return scan_train(src)[0] if is_kaggle_train(src) else None
