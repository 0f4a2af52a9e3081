"""ImageFolder layout: ``root/<class>/**/*.jpg``; and test folders of any of the supported shapes."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DataConfig
from .images import DataError, is_image_file
from .kaggle import is_kaggle_test, scan_test as scan_numbered
from .layout import Samples, register_layout, train_root
from .pipeline import Files, ImageLayout, rel_id


def find_images(folder: Path) -> list[str]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped.

    Symlinked folders are followed, each real folder once (by device and inode): a link back up the tree
    (``ln -s . cat/x``) is not a loop that never ends."""
    out: list[str] = []
    try:
        st = os.stat(folder)
    except OSError:
        return out
    visited = {(st.st_dev, st.st_ino)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            try:
                st = os.stat(os.path.join(dirpath, d))
            except OSError:
                continue  # a dangling link
            if (st.st_dev, st.st_ino) not in visited:
                visited.add((st.st_dev, st.st_ino))
                keep.append(d)
        dirnames[:] = keep
        out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)]
    return sorted(out)


def class_folders(root: Path) -> dict[str, list[str]]:
    """``{class name: sorted image paths}`` for each subfolder of ``root`` that holds images."""
    if not root.is_dir():
        return {}
    out = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = find_images(Path(entry.path))
            if files:
                out[entry.name] = files
    return out


def has_class_folders(root: Path) -> bool:
    return bool(class_folders(root))


def scan(root: Path, class_names: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(path, label)]`` and the class names (sorted subfolder names, unless given).

    Given ``class_names`` (a val folder): a class missing here is fine, an unknown one is a DataError.
    """
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    groups = class_folders(root)
    if not groups:
        raise DataError(f"{root}: no class subfolders with images (expected {root}/<class>/<image>.jpg)")
    if class_names is None:
        class_names = list(groups)
    unknown = [c for c in groups if c not in class_names]
    if unknown:
        raise DataError(f"{root}: classes {unknown} are not among the training classes {class_names}; "
                        f"the validation folder must use the training folder's class names")
    index = {c: i for i, c in enumerate(class_names)}
    samples = [(p, index[c]) for c, files in groups.items() for p in files]
    return samples, class_names


def scan_test(root: Path, class_names: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Test images and their ids, from one of three shapes:

    * Kaggle test layout (only ``<num>.<ext>`` at the top): label -1, id = the number, sorted numerically;
    * class subfolders and no images at the top: labels through ``class_names``, id = relative path;
    * anything else: every image below, label -1, id = relative path without extension.
    """
    if not root.is_dir():
        raise DataError(f"test folder {root} does not exist; pass --test-data-root=DIR")
    if is_kaggle_test(root) and not has_class_folders(root):
        return scan_numbered(root)
    top = [e for e in os.scandir(root) if e.is_file() and is_image_file(e.name)]
    if not top and has_class_folders(root):
        samples, _ = scan(root, class_names)
    else:
        samples = [(p, -1) for p in find_images(root)]
    if not samples:
        raise DataError(f"test folder {root} holds no images")
    return samples, [rel_id(p, root) for p, _ in samples]


@register_layout("folder")
class FolderLayout(ImageLayout):
    """Class folders; and the reader of test folders (any shape, see :func:`scan_test`) for every image layout."""

    doc = "class subfolders (root/<class>/<image>.jpg)"
    priority = 40

    def detect(self, cfg: DataConfig) -> bool:
        return has_class_folders(train_root(cfg))

    def scan(self, root: Path, classes: list[str] | None = None) -> tuple[Samples, list[str]]:
        return scan(root, classes)

    def test_files(self, cfg: DataConfig, classes: list[str]) -> Files | None:
        if not cfg.test_data_root:
            return None
        samples, ids = scan_test(Path(cfg.test_data_root).expanduser(), classes)
        return Files(samples, ids, cfg.test_data_root)

    def prepare_files(self, src: Path) -> Samples | None:
        if not src.is_dir():
            return None
        if has_class_folders(src) and not is_kaggle_test(src):
            return scan(src)[0]
        return scan_test(src, list(class_folders(src)))[0]  # a test folder: Kaggle's numbered files, or any images
