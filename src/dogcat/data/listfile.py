"""List files: CSV with a ``path,label`` header, or ``path label`` lines (torch_base style).

Paths are relative to the list file's folder, or absolute. Labels are class names or integers.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..io import read_small
from .images import DataError
from .layout import Samples, register_layout
from .multilabel import Columns, check_names, encode, flag, split_labels
from .pipeline import Files, ImageLayout


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def csv_columns(path: Path, text: str) -> tuple[csv.DictReader, dict[str, str]]:
    """A CSV list's reader and its header, ``{lower-cased stripped name: name as written}``."""
    reader = csv.DictReader(io.StringIO(text))
    return reader, {(f or "").strip().lower(): f for f in reader.fieldnames or []}


def column(fields: dict[str, str], name: str, path: Path, option: str) -> str:
    """The header name of column ``name`` (any case), or one DataError line naming the option and the columns."""
    key = name.strip().lower()
    if key not in fields:
        raise DataError(f"{path}: no column {name!r} (--{option}={name}); its columns: "
                        f"{', '.join(map(repr, fields.values()))}")
    return fields[key]


def _read_csv(path: Path, text: str, path_column: str = "path",
              label_column: str = "label") -> list[tuple[str, str | None]]:
    reader, fields = csv_columns(path, text)
    if path_column.strip().lower() not in fields and path_column == "path":
        raise DataError(f"{path}: a CSV list needs a header line with a 'path' column (and 'label'), "
                        f"got {reader.fieldnames}; other names: --path-column, --label-column")
    pcol = column(fields, path_column, path, "path-column")
    lcol = fields.get(label_column.strip().lower()) if label_column == "label" else \
        column(fields, label_column, path, "label-column")
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


def read_text(path: str | Path) -> tuple[Path, str, bool]:
    """``(path, its text, whether it is a CSV)``: a ``.csv`` name, or a first line naming a ``path`` column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    try:  # utf-8-sig: spreadsheets like to add a BOM; surrogateescape: non-UTF-8 names stay the bytes they are
        text = read_small(path, 1 << 30).decode("utf-8-sig", "surrogateescape")
    except (OSError, ValueError) as e:
        raise DataError(f"list file {path} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [h.strip().lower() for h in next(csv.reader([first]), [])]
    return path, text, path.suffix.lower() == ".csv" or "path" in header


def absolute_rows(path: Path, rows: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Rows with paths made absolute (relative ones from the list file's folder); at least one must exist."""
    if not rows:
        raise DataError(f"list file {path} lists no images")
    base = path.parent
    rows = [(os.path.normpath(p if os.path.isabs(p) else base / p), y) for p, y in rows]
    if not any(os.path.exists(p) for p, _ in rows):
        raise DataError(f"{path}: none of the listed files exist (first: {rows[0][0]}); relative paths "
                        f"are taken from the list file's folder {base}")
    return rows


def read_list(path: str | Path, need_labels: bool = True, path_column: str = "path",
              label_column: str = "label") -> list[tuple[str, str | None]]:
    """``[(absolute path, raw label or None)]`` in file order; ``path_column`` / ``label_column``: a CSV's
    column names (any case)."""
    path, text, is_csv = read_text(path)
    rows = _read_csv(path, text, path_column, label_column) if is_csv else _read_lines(text, path.parent)
    rows = absolute_rows(path, rows)
    if need_labels:
        missing = [p for p, y in rows if y is None]
        if missing:
            raise DataError(f"{path}: {len(missing)} rows have no label (first: {missing[0]}); "
                            f"training and validation lists need 'path label' on every row")
    return rows


def list_ids(path: str | Path, paths: list[str]) -> list[str]:
    """Each sample's id: its path relative to the list's folder, without extension."""
    base = Path(path).expanduser().parent
    ids = []
    for p in paths:
        rel = os.path.relpath(p, base)
        ids.append(os.path.splitext(p if rel.startswith("..") else rel)[0].replace(os.sep, "/"))
    return ids


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


def load(path: str | Path, class_names: list[str] | None = None, need_labels: bool = True,
         path_column: str = "path", label_column: str = "label") -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``([(path, label)], class_names, ids)``; ids are paths relative to the list's folder, no extension."""
    rows = read_list(path, need_labels, path_column, label_column)
    if class_names is None:
        class_names = class_names_of([y for _, y in rows if y is not None])
    index = {name: i for i, name in enumerate(class_names)}
    samples = [(p, index[y] if y in index else to_index(y, class_names, str(path))) for p, y in rows]
    return samples, class_names, list_ids(path, [p for p, _ in samples])


def _multilabel_rows(path: Path, text: str, is_csv: bool, cols: Columns
                     ) -> tuple[list[tuple[str, list[str] | None]], list[str] | None]:
    """``([(path, label names or None)], names of the 0/1 columns or None)`` of a multi-label list."""
    if not is_csv:  # 'path a;b' lines (the labels are the last field), or 'path a b' with --label-sep=space
        rows: list[tuple[str, list[str] | None]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or (not rows and line.lower().split()[:1] == ["path"]):
                continue
            parts = line.split(None, 1) if cols.sep is None else line.rsplit(None, 1)
            p, cell = parts if len(parts) == 2 else (parts[0], "")
            rows.append((p, split_labels(cell, cols.sep) if cell.strip() else None))
        return rows, None
    reader, fields = csv_columns(path, text)
    pcol = column(fields, cols.path, path, "path-column")
    if cols.labels is not None:  # one 0/1 column per label
        names = [f for f in (reader.fieldnames or []) if f != pcol] if cols.labels == ("*",) else \
            [column(fields, c, path, "label-columns") for c in cols.labels]
        out: list[tuple[str, list[str] | None]] = []
        for n, rec in enumerate(reader, start=2):
            p = (rec.get(pcol) or "").strip()
            cells = [(rec.get(c) or "").strip() for c in names]
            if p:
                out.append((p, None if not any(cells) else
                            [c for c, v in zip(names, cells) if flag(v, f"{path} line {n}, column {c!r}")]))
        return out, [c.strip() for c in names]
    key = cols.label if cols.label.strip().lower() in fields or cols.label != "label" else "labels"
    lcol = column(fields, key, path, "label-column")
    rows = [((rec.get(pcol) or "").strip(), (rec.get(lcol) or "").strip()) for rec in reader]
    return [(p, split_labels(cell, cols.sep) if cell else None) for p, cell in rows if p], None


def load_multilabel(path: str | Path, cols: Columns, names: list[str] | None = None, need_labels: bool = True
                    ) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """A multi-label list as ``([(path, label mask)], label names, ids)`` (see ``data/multilabel.py``). With
    ``names`` (a validation or test list) every label must be one of them; a row without labels is refused
    when ``need_labels``, else its mask is -1 (unknown)."""
    path, text, is_csv = read_text(path)
    rows, columns = _multilabel_rows(path, text, is_csv, cols)
    rows = absolute_rows(path, rows)
    if need_labels:
        empty = [p for p, y in rows if y is None]
        if empty:
            raise DataError(f"{path}: {len(empty)} rows have no labels (first: {empty[0]}); every training and "
                            "validation image needs its labels (an image with none of them: use 0/1 columns, "
                            "--label-columns)")
    if names is None:
        names = columns if columns is not None else class_names_of([n for _, y in rows for n in y or []])
        check_names(names, str(path))
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for p, y in rows:
        unknown = [n for n in y or [] if n not in index]
        if unknown:
            raise DataError(f"{path}: label {unknown[0]!r} (of {p}) is not one of the training labels {names}")
        samples.append((p, encode(index[n] for n in y) if y is not None else -1))
    return samples, names, list_ids(path, [p for p, _ in samples])


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
        if cfg.task == "multilabel":
            cols = Columns.of(cfg)
            samples, names, ids = load_multilabel(src, cols)
            val = None
            if val_src:
                vs, _, vids = load_multilabel(val_src, cols, names)
                val = Files(vs, vids, val_src)
            return Files(samples, ids, src), val, names
        samples, names, ids = load(src, path_column=cfg.path_column, label_column=cfg.label_column)
        val = None
        if val_src:
            vs, _, vids = load(val_src, names, path_column=cfg.path_column, label_column=cfg.label_column)
            val = Files(vs, vids, val_src)
        return Files(samples, ids, src), val, names

    def test_files(self, cfg: DataConfig, classes: list[str]) -> Files | None:
        if not cfg.test_list:
            return None
        if cfg.task == "multilabel":
            samples, _, ids = load_multilabel(cfg.test_list, Columns.of(cfg), classes, need_labels=False)
        else:
            samples, _, ids = load(cfg.test_list, classes, need_labels=False, path_column=cfg.path_column,
                                   label_column=cfg.label_column)
        return Files(samples, ids, cfg.test_list)

    def prepare_files(self, src: Path) -> Samples | None:
        return load(src, need_labels=False)[0] if src.is_file() else None
