"""A run folder's layout (:class:`RunFolder`): where each of its files is, and the readers of the ones that
others read back (the status word, metrics.jsonl, config.yaml).

```
RUN/config.yaml      the resolved config            RUN/checkpoints/   last.pt, best.pt, top-k, archives
    metrics.jsonl    one record a line (records.py)     control/       the `dogcat ctl` inbox, debug trigger
    status           running / finished / ...           splits/        train.csv, val.csv
    manifest.json    what ran, where, on what           report/        index.html and its pictures
    result.json      `dogcat val`'s metrics             debug/         `dogcat ctl debug` dumps
    bad_files.txt    images training skipped            lock           held by the process writing the run
```

Every module that reads or writes a run folder asks a RunFolder for the path, so each name is written here
once. The readers treat the folder as data from elsewhere (a copied, half-deleted or planted run): they read
regular files only, of a bounded size, without blocking on a FIFO; a missing file is "none yet", and a damaged
one is a :class:`~dogcat.io.MalformedFile` naming it. This module sits at the bottom of ``tracking``: it
imports nothing of it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..config import ConfigError
from ..io import MalformedFile, UnsafePath, check_dir, one_line, read_small, safe_dir
from ..jsonfiles import read_jsonl
from ..locks import RUN_LOCK, FileLock, describe_holder, is_locked, process_alive
from ..reading import load_yaml

# The folders dogcat makes inside a run folder and the files it appends to (relative paths): a run folder may come
# from elsewhere, and any of them could be a symbolic link planted to make a write or a clean-up land outside it.
OWNED_DIRS = ("control", "control/inbox", "control/done", "checkpoints", "report", "splits", "debug", "explain",
              "export", "wandb")
APPENDED = ("metrics.jsonl", "bad_files.txt", "bad_files_test.txt")
EMBEDDINGS = re.compile(r"\d{5,}")  # TensorBoard's projector writes RUN/<step, 5 digits>/<tag>/ and a config
PROJECTOR = "projector_config.pbtxt"
STATUS_BYTES = 4096         # a status file holds one word
CONFIG_BYTES = 16 << 20     # a resolved config is a few KiB
METRICS_BYTES = 1 << 30     # metrics.jsonl: a record every print_freq steps; a million steps stay far below


class RunFolder:
    """The paths of one run folder (it need not exist yet) and safe readers of its files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # --- where things are ----------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The resolved config: enough to re-run; its presence is what makes a folder a run (:meth:`is_run`)."""
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        """One JSON record a line (tracking/records.py), appended while training."""
        return self.path / "metrics.jsonl"

    @property
    def status_file(self) -> Path:
        """One word of :data:`~dogcat.tracking.run.STATUSES` (:meth:`status` reads it)."""
        return self.path / "status"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``last``, ``best``)."""
        return self.checkpoints / f"{which}.pt"

    @property
    def control(self) -> Path:
        """The ``dogcat ctl`` inbox and the default debug trigger (control.py)."""
        return self.path / "control"

    @property
    def debug_trigger(self) -> Path:
        """Where ``--debug-file`` points by default."""
        return self.control / "debug"

    @property
    def splits(self) -> Path:
        return self.path / "splits"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def result(self) -> Path:
        """``dogcat val``'s metrics."""
        return self.path / "result.json"

    @property
    def test_result(self) -> Path:
        """``dogcat test``'s metrics on a labelled test set."""
        return self.path / "test_result.json"

    @property
    def submission(self) -> Path:
        """``dogcat test``'s CSV when ``--result-file`` names no other place."""
        return self.path / "submission.csv"

    @property
    def bad_files(self) -> Path:
        """Training and validation images that could not be read."""
        return self.path / "bad_files.txt"

    @property
    def bad_test_files(self) -> Path:
        """``dogcat test``'s own list: unreadable test images (training's list must not become rows)."""
        return self.path / "bad_files_test.txt"

    @property
    def lock(self) -> Path:
        """The OS lock the process writing the run holds (locks.FileLock)."""
        return self.path / RUN_LOCK

    @property
    def reserve(self) -> Path:
        """Space set aside while a run trains (tracking/run.py)."""
        return self.path / ".disk-reserve"

    @property
    def trackers(self) -> Path:
        """Each tracker's own run id (MLflow, W&B), so that a resumed run continues it."""
        return self.path / "trackers.json"

    def artifacts(self) -> list[Path]:
        """The files a tracker keeps with its run at the end (those that exist)."""
        return [p for p in (self.config, self.metrics, self.manifest, self.result, self.report) if p.exists()]

    def split_files(self) -> list[str]:
        """``splits/*.csv``, relative to the run folder, sorted."""
        return sorted(str(p.relative_to(self.path)) for p in self.splits.glob("*.csv"))

    def owned(self, folder: Path) -> Path:
        """``folder`` (inside the run folder), made when missing, every folder from the run folder down to it
        a real one (io.safe_dir: a symbolic link is refused, naming it)."""
        return safe_dir(folder, top=self.path)

    def check_owned(self) -> None:
        """Before writing into the run folder (a training or a resume): none of the folders it makes or the files
        it appends to (:data:`OWNED_DIRS`, :data:`APPENDED`, TensorBoard's projector files) is a symbolic link or
        something else than it should be. Files written whole need no check: a rename replaces a link itself."""
        for sub in OWNED_DIRS:
            check_dir(self.path / sub, top=self.path)
        try:
            names = os.listdir(self.path)
        except OSError:
            return
        for name in names:
            if EMBEDDINGS.fullmatch(name):
                check_dir(self.path / name, top=self.path)
                for tag in _listdir(self.path / name):
                    check_dir(self.path / name / tag, top=self.path)
        for name in (*APPENDED, PROJECTOR):
            path = self.path / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(f"{path} is a symbolic link: dogcat writes its files only as regular files in the "
                                 "run folder, never through a link (its target is left untouched); remove the link")
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{path} is not a regular file: dogcat made no such thing here; move it away")

    # --- what is in it -----------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """A run folder is one with a config.yaml (a folder being created has none yet)."""
        return self.config.is_file()

    def status(self) -> str:
        """The word in the status file; "unknown" when there is none (a damaged one reads as itself, cut to a
        line; one that cannot be read at all, a folder or a FIFO in its place, is a MalformedFile)."""
        try:
            word = read_small(self.status_file, STATUS_BYTES).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return "unknown"
        except (OSError, ValueError) as e:
            raise MalformedFile(f"status file {self.status_file} is unreadable ({one_line(e)})") from None
        return word or "unknown"

    def starting(self) -> str | None:
        """Who is starting this run: the live process that holds its lock (``RUN/lock``) before it reads
        commands (it loads data and builds the model first), described; None when no process holds it. The lock
        is looked up, never taken (that could refuse the trainer); where the OS cannot say, a live writer of the
        lock file with status "running" counts."""
        lock = FileLock(self.lock)
        held = is_locked(lock.path)
        holder = lock.holder()
        if held is None:
            try:
                held = self.status() == "running"
            except MalformedFile:
                held = False
        alive = bool(holder) and process_alive(holder.get("pid"), holder.get("start"), holder.get("host")) is not False
        return describe_holder(holder) if held and alive else None

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """The records of metrics.jsonl in order; a line cut short by a kill, or anything but a JSON object, is
        skipped. None yet: nothing. Unreadable (not a regular file, past :data:`METRICS_BYTES`): MalformedFile."""
        yield from read_jsonl(self.metrics, "metrics file", limit=METRICS_BYTES)

    def records(self) -> list[dict[str, Any]]:
        """:meth:`iter_records` as a list."""
        return list(self.iter_records())

    def config_text(self) -> str | None:
        """config.yaml as text to show (undecodable bytes replaced); None when there is none or it cannot be read."""
        try:
            return read_small(self.config, CONFIG_BYTES).decode("utf-8", "replace")
        except (OSError, ValueError):
            return None

    def config_tree(self) -> dict[str, Any]:
        """The mapping in config.yaml (nested by section, as written); ``{}`` when there is none. Not YAML, not
        a mapping or unreadable: a MalformedFile naming it."""
        try:
            tree = load_yaml(read_small(self.config, CONFIG_BYTES).decode("utf-8")) or {}  # nesting capped
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise MalformedFile(f"{self.config} is not readable YAML ({one_line(e, 200)})") from None
        if not isinstance(tree, dict):
            raise MalformedFile(f"{self.config} is not a YAML mapping")
        return tree


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def find_run(spec: str, runs_root: str | Path = "runs") -> Path:
    """A run folder from its path, its name under ``runs_root``, or ``latest`` (the newest config.yaml)."""
    for flag, value in (("--resume", spec), ("--runs-root", runs_root)):
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{flag} expects a folder name, got {value!r}")
    if spec == "latest":
        runs = [RunFolder(p) for p in Path(runs_root).glob("*/")]
        runs = [r for r in runs if r.is_run()]
        if not runs:
            raise ConfigError(f"--resume=latest: no run folders under {runs_root}")
        return max(runs, key=lambda r: r.config.stat().st_mtime).path
    for cand in (RunFolder(spec), RunFolder(Path(runs_root) / spec)):
        if cand.is_run():
            return cand.path
    raise ConfigError(f"no run folder {spec!r} (looked for {RunFolder(spec).config} and "
                      f"{RunFolder(Path(runs_root) / spec).config})")
