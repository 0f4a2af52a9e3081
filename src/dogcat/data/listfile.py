"""List files: CSV with a ``path,label`` header, or ``path label`` lines (torch_base style).

Paths are relative to the list file's folder, or absolute. Labels are class names or integers.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..config import DataConfig
from ..io import read_small
from .images import DataError
from .layout import Samples, register_layout
from .pipeline import Files, ImageLayout


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, text: str) -> list[tuple[str, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    if "path" not in fields:
        raise DataError(f"{path}: a CSV list needs a header line with a 'path' column (and 'label'), "
                        f"got {reader.fieldnames}")
    pcol, lcol = fields["path"], fields.get("label")
    rows = []
    for rec in reader:
        p = (rec.get(pcol) or "").strip()
        if p:
            label = (rec.get(lcol) or "").strip() if lcol else ""
            rows.append((p, label or None))
    return rows


def _read_lines(text: str, base: Path) -> list[tuple[str, str | None]]:
    rows: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not rows and line.lower().split() in (["path", "label"], ["path"]):
            continue  # a header line
        if os.path.isfile(base / line):  # an unlabelled path with spaces in it
            rows.append((line, None))
            continue
        parts = line.rsplit(None, 1)  # the label is the last field; a path may contain spaces
        rows.append((parts[0], parts[1]) if len(parts) == 2 else (parts[0], None))
    return rows


def read_list(path: str | Path, need_labels: bool = True) -> list[tuple[str, str | None]]:
    """``[(absolute path, raw label or None)]`` in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    try:  # utf-8-sig: spreadsheets like to add a BOM; surrogateescape: non-UTF-8 names stay the bytes they are
        text = read_small(path, 1 << 30).decode("utf-8-sig", "surrogateescape")
    except (OSError, ValueError) as e:
        raise DataError(f"list file {path} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [h.strip().lower() for h in next(csv.reader([first]), [])]
    is_csv = path.suffix.lower() == ".csv" or "path" in header
    base = path.parent
    rows = _read_csv(path, text) if is_csv else _read_lines(text, base)
    if not rows:
        raise DataError(f"list file {path} lists no images")
    rows = [(os.path.normpath(p if os.path.isabs(p) else base / p), y) for p, y in rows]
    if need_labels:
        missing = [p for p, y in rows if y is None]
        if missing:
            raise DataError(f"{path}: {len(missing)} rows have no label (first: {missing[0]}); "
                            f"training and validation lists need 'path label' on every row")
    if not any(os.path.exists(p) for p, _ in rows):
        raise DataError(f"{path}: none of the listed files exist (first: {rows[0][0]}); relative paths "
                        f"are taken from the list file's folder {base}")
    return rows


def class_names_of(labels: list[str]) -> list[str]:
    """Sorted distinct names; integers sort numerically and are named ``str(int)``."""
    if all(_is_int(y) for y in labels):
        return [str(i) for i in sorted({int(y) for y in labels})]
    return sorted(set(labels))


def to_index(label: str | None, class_names: list[str], where: str) -> int:
    """Map a raw label to its class index: by name, else (an integer) as an index; None -> -1."""
    if label is None:
        return -1
    if label in class_names:
        return class_names.index(label)
    if _is_int(label):
        i = int(label)
        if str(i) in class_names:
            return class_names.index(str(i))
        if 0 <= i < len(class_names):
            return i
    raise DataError(f"{where}: label {label!r} is not one of the classes {class_names}")


def load(path: str | Path, class_names: list[str] | None = None,
         need_labels: bool = True) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``([(path, label)], class_names, ids)``; ids are paths relative to the list's folder, no extension."""
    rows = read_list(path, need_labels)
    if class_names is None:
        class_names = class_names_of([y for _, y in rows if y is not None])
    index = {name: i for i, name in enumerate(class_names)}
    samples = [(p, index[y] if y in index else to_index(y, class_names, str(path))) for p, y in rows]
    base = Path(path).expanduser().parent
    ids = []
    for p, _ in samples:
        rel = os.path.relpath(p, base)
        ids.append(os.path.splitext(p if rel.startswith("..") else rel)[0].replace(os.sep, "/"))
    return samples, class_names, ids


@register_layout("list")
class ListLayout(ImageLayout):
    doc = "a list file via --train-list (CSV 'path,label' or 'path label' lines)"
    priority = 10  # --train-list names the data whatever --train-data-root says

    def detect(self, cfg: DataConfig) -> bool:
        return bool(cfg.train_list)

    def sources(self, cfg: DataConfig) -> tuple[str | None, str | None]:
        return cfg.train_list, cfg.val_list

    def train_files(self, cfg: DataConfig) -> tuple[Files, Files | None, list[str]]:
        src, val_src = self.sources(cfg)
        if not src:
            raise DataError("--dataset=list needs --train-list=FILE (CSV 'path,label' or 'path label' lines)")
        samples, names, ids = load(src)
        val = None
        if val_src:
            vs, _, vids = load(val_src, names)
            val = Files(vs, vids, val_src)
        return Files(samples, ids, src), val, names

    def test_files(self, cfg: DataConfig, classes: list[str]) -> Files | None:
        if not cfg.test_list:
            return None
        samples, _, ids = load(cfg.test_list, classes, need_labels=False)
        return Files(samples, ids, cfg.test_list)

    def prepare_files(self, src: Path) -> Samples | None:
        return load(src, need_labels=False)[0] if src.is_file() else None
