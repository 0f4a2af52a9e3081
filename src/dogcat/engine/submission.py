"""Writing the submission CSV of ``dogcat test`` and checking it before anyone uploads it.

The check re-reads the file it wrote: against ``--sample-submission`` (same header, same ids in the
same order) when given, else against the test set (one row per image, no duplicates). Probabilities
must lie in [0, 1]. A failure names the missing / extra ids; the CLI exits 2.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from ..data import DataError
from ..io import atomic_write_text, one_line
from ..reading import read_regular


class SubmissionError(DataError):
    """The written CSV does not match what the competition expects."""


def _few(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f", ... ({len(ids)} in all)" if len(ids) > n else f" ({len(ids)})")


CSV_BYTES = 256 << 20  # Kaggle's sample submissions are a few MB; /dev/zero or a planted giant is not one


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file (``utf-8-sig``: Excel-saved sample files start with a BOM): a regular
    file of at most :data:`CSV_BYTES` (a FIFO or ``/dev/zero`` is refused before reading)."""
    try:
        text = read_regular(path, CSV_BYTES).decode("utf-8-sig", "surrogateescape")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (OSError, ValueError, csv.Error) as e:
        raise SubmissionError(f"cannot read the CSV {path}: {one_line(e)}") from None
    if not rows:
        raise SubmissionError(f"{path} is empty: expected a header line and one row per test image")
    return rows[0], [r for r in rows[1:] if r]


def write_submission(out: Path, rows: dict[str, list[float]], class_names: list[str], positive: int | None,
                     order: list[str], clip: Sequence[float] | None = None,
                     thresholds: Sequence[float] | None = None) -> None:
    """``id,label`` = p(positive) for 2 classes (``positive`` set), else ``id,label,<class>...`` with the argmax
    class and one probability per class. ``clip`` bounds the written probabilities (log-loss insurance).
    ``thresholds`` (a multi-label model): ``id,labels,<label>...``, the labels whose probability reaches their
    threshold joined by ``;``, then one probability per label."""
    lo, hi = (float(clip[0]), float(clip[1])) if clip else (0.0, 1.0)

    def fmt(p: float) -> str:
        return f"{min(max(p, lo), hi):.6f}"

    buf = io.StringIO(newline="")  # newline='' or csv writes \r\r\n on Windows
    w = csv.writer(buf)
    if thresholds is not None:
        w.writerow(["id", "labels", *class_names])
        for i in order:
            p = rows[i]
            w.writerow([i, ";".join(n for n, x, t in zip(class_names, p, thresholds) if x >= t), *map(fmt, p)])
    elif positive is not None:
        w.writerow(["id", "label"])
        w.writerows([i, fmt(rows[i][positive])] for i in order)
    else:
        w.writerow(["id", "label", *class_names])
        for i in order:
            p = rows[i]
            w.writerow([i, class_names[max(range(len(p)), key=p.__getitem__)], *map(fmt, p)])
    atomic_write_text(out, buf.getvalue(), f"writing the submission {out.name}")  # whole or not at all


def sample_order(sample: str | Path | None, ids: list[str]) -> list[str]:
    """Our ids in the sample submission's order (ids it lacks go last, for the check to name)."""
    if not sample:
        return ids
    ref = [r[0] for r in read_csv(sample)[1]]
    ours = set(ids)
    listed = [i for i in dict.fromkeys(ref) if i in ours]
    seen = set(listed)
    return listed + [i for i in ids if i not in seen]


def check_submission(path: Path, expected_ids: Sequence[str] | None = None, sample: str | Path | None = None) -> None:
    """Raise :class:`SubmissionError` unless ``path`` matches ``sample`` (or ``expected_ids``)."""
    header, rows = read_csv(path)
    ids = [r[0] for r in rows]
    problems: list[str] = []
    if sample:
        ref_header, ref_rows = read_csv(sample)
        ref, what = [r[0] for r in ref_rows], f"the sample submission {sample}"
        if [h.strip().lower() for h in header] != [h.strip().lower() for h in ref_header]:
            problems.append(f"header {','.join(header)!r} differs from the sample's {','.join(ref_header)!r}")
    else:
        ref, what = list(expected_ids or []), "the test set"
    dups = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dups:
        problems.append(f"duplicate ids: {_few(dups)}")
    have, want = set(ids), set(ref)
    missing = [i for i in ref if i not in have]
    extra = [i for i in ids if i not in want]
    if missing:
        problems.append(f"ids in {what} missing from the CSV: {_few(missing)}")
    if extra:
        problems.append(f"ids in the CSV that {what} lacks: {_few(extra)}")
    if sample and not (missing or extra or dups) and ids != ref:
        k = next(n for n, (a, b) in enumerate(zip(ids, ref)) if a != b)
        problems.append(f"rows out of the sample's order from row {k + 1} (id {ids[k]}, sample has {ref[k]})")
    if len(rows) != len(ref) and not (missing or extra or dups):
        problems.append(f"{len(rows)} rows, {what} has {len(ref)}")
    problems += _check_probabilities(header, rows)
    if problems:
        raise SubmissionError(f"submission check failed for {path}: " + "; ".join(problems)
                              + ". Check that --test-data-root (or --test-list) and --sample-submission describe "
                                "the same test set; the CSV was written but should not be uploaded as is.")


def _check_probabilities(header: list[str], rows: list[list[str]]) -> list[str]:
    """Probability columns: ``label`` for ``id,label``, else the per-class columns after ``label``."""
    cols = [1] if len(header) == 2 else list(range(2, len(header)))
    bad: list[str] = []
    for r in rows:
        for c in cols:
            try:
                ok = 0.0 <= float(r[c]) <= 1.0
            except (ValueError, IndexError):
                ok = False
            if not ok:
                bad.append(r[0])
                break
    return [f"probabilities outside [0, 1] or missing for ids {_few(bad)}"] if bad else []
