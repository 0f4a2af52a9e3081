"""A run folder: resolved config, metrics.jsonl, status, checkpoints, split files, bad-file list."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, ConfigError, to_yaml
from ..io import atomic_write_text, disk_full_as, is_disk_full, read_jsonl, reserve_space
from ..locks import RUN_LOCK, FileLock, LockHeld, describe_holder

if TYPE_CHECKING:
    from .tracker import Tracker

STATUSES = ("running", "finished", "failed", "stopped", "pruned")  # pruned: ended early by a sweep's pruner


def default_run_name(cfg: Config) -> str:
    if cfg.train.env and cfg.train.env != "default":
        return cfg.train.env
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.model.model.lower()).strip("-")
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_run(spec: str, runs_root: str | Path = "runs") -> Path:
    """A run folder from its path, its name under ``runs_root``, or ``latest``."""
    for flag, value in (("--resume", spec), ("--runs-root", runs_root)):
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{flag} expects a folder name, got {value!r}")
    if spec == "latest":
        runs = [p for p in Path(runs_root).glob("*/") if (p / "config.yaml").is_file()]
        if not runs:
            raise ConfigError(f"--resume=latest: no run folders under {runs_root}")
        return max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)
    for cand in (Path(spec), Path(runs_root) / spec):
        if (cand / "config.yaml").is_file():
            return cand
    raise ConfigError(f"no run folder {spec!r} (looked for {spec}/config.yaml and {runs_root}/{spec}/config.yaml)")


def _mkdir(path: Path, flag: str) -> None:
    """``mkdir -p``; a path that cannot be a folder (a file is there, no permission) is one ConfigError line."""
    with disk_full_as(path.parent, what=f"creating {path.name}"):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_disk_full(e):
                raise
            raise ConfigError(f"{flag}={path}: cannot make that folder ({e.strerror or e})") from None


class RunLocked(ConfigError):
    """Another process is writing the run folder (it holds the run's lock); the CLI exits 2."""


LOCK_FILE = RUN_LOCK
# Space set aside while a run trains and given back when it ends: on a full disk, what is left to write (the
# status, the manifest's end with the reason) still fits.
RESERVE, RESERVE_BYTES = ".disk-reserve", 1 << 20


class Run:
    """The folder of one training run; rank 0 writes it, holding its lock (``RUN/lock``) for the whole run."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = path
        self.writer = writer  # False on DDP ranks other than 0: they read the folder, never write it
        self.ckpt_dir = path / "checkpoints"
        self.tracker: Tracker | None = None  # manifest + TensorBoard while training (tracking/tracker.py)
        self._lock: FileLock | None = None

    def lock(self) -> "Run":
        """Take the run's OS lock (fcntl.flock, released when the process ends, kill -9 included); a run
        another process is training or resuming is refused, naming that process."""
        if self.writer and self._lock is None:
            lock = FileLock(self.path / LOCK_FILE)
            try:
                lock.acquire()
            except LockHeld as e:
                raise RunLocked(f"run folder {self.path} is in use by {describe_holder(e.holder)}: another "
                                "training or resume is writing it. Wait for it to end, or stop it with "
                                f"`dogcat ctl {self.path} stop`") from None
            except OSError as e:  # not a folder we can write, or a link planted where the lock goes
                raise RunLocked(f"cannot lock the run folder {self.path} ({lock.path}: {e.strerror or e})") from None
            self._lock = lock
            reserve_space(self.path / RESERVE, RESERVE_BYTES)
        return self

    def unlock(self) -> None:
        self._free_reserve()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @classmethod
    def create(cls, cfg: Config) -> "Run":
        """A new run folder, claimed atomically (mkdir) and locked before anything is written into it; an
        explicit ``run_dir`` that already holds a run is refused (use --resume)."""
        if cfg.train.run_dir:
            path = Path(cfg.train.run_dir).expanduser()
            _mkdir(path, "--run-dir")
            run = cls(path).lock()
            if (path / "config.yaml").exists():
                run.unlock()
                raise ConfigError(f"--run-dir={path} already holds a run; pass --resume={path} to continue it, "
                                  "or choose another folder")
        else:
            base = Path(cfg.train.runs_root).expanduser() / default_run_name(cfg)
            _mkdir(base.parent, "--runs-root")
            path, i = base, 1
            while True:  # two runs started in the same second, or a reused --env: the next free name
                try:
                    os.mkdir(path)  # atomic: of two processes racing for a name, one gets it
                    break
                except FileExistsError:
                    i += 1
                    path = base.with_name(f"{base.name}-{i}")
            run = cls(path).lock()
        try:
            atomic_write_text(path / "config.yaml", to_yaml(cfg))
        except BaseException:
            run.unlock()
            raise
        return run

    def checkpoint(self, name: str) -> Path:
        return self.ckpt_dir / f"{name}.pt"

    def set_status(self, status: str, error: BaseException | None = None) -> None:
        """Write ``status``; a final one also completes the manifest (with the error that ended the run) and
        closes TensorBoard. A run that failed on a full disk first gives back its reserve (see :meth:`lock`),
        so that these last small records can still be written whole."""
        assert status in STATUSES
        if not self.writer:
            return
        if status != "running":
            self._free_reserve()
        atomic_write_text(self.path / "status", status + "\n")
        if status != "running" and self.tracker is not None:
            self.tracker.finish(status, error)

    def _free_reserve(self) -> None:
        (self.path / RESERVE).unlink(missing_ok=True)

    def status(self) -> str:
        p = self.path / "status"
        return p.read_text(errors="replace").strip() if p.exists() else "unknown"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and flush it, so a crash loses at most this line; a write
        that fails (disk full) is cut back off, so no half line stays."""
        if not self.writer:
            return
        line = json.dumps({"time": round(time.time(), 3), **record}) + "\n"
        path = self.path / "metrics.jsonl"
        with disk_full_as(self.path, len(line), "appending to metrics.jsonl"), open(path, "a") as f:
            end = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError:
                f.truncate(end)
                raise
        if self.tracker is not None:  # the same records, on the same step axis, to TensorBoard
            self.tracker.log_record(record)

    def records(self) -> list[dict[str, Any]]:
        """The logged records; a line cut short by a kill, or anything but a JSON object, is skipped."""
        return read_jsonl(self.path / "metrics.jsonl", "metrics file")  # bounded: a regular file, capped

    def rewind_log(self, step: int, epoch: int) -> int:
        """Drop records logged after the checkpoint a resume starts from (a killed run may have logged
        steps it never saved); the resumed run logs them again on the same step axis. Returns the count."""
        if not self.writer:
            return 0
        records = self.records()

        def after(r: dict[str, Any]) -> bool:
            s, e = r.get("step", 0), r.get("epoch", 0)
            return (isinstance(s, (int, float)) and s > step) or (
                r.get("kind") == "epoch" and isinstance(e, (int, float)) and e > epoch)

        keep = [r for r in records if r.get("kind") == "event" or not after(r)]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_text(self.path / "metrics.jsonl", text)
        return len(records) - len(keep)
