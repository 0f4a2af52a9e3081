"""The writer of a run folder (:class:`Run`): claims and locks it, writes the config, the status and the
metrics.jsonl records, and hands each record to its sinks (the trackers). Where each file is: folder.py."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, flag, to_yaml
from ..io import (UnsafePath, atomic_write_text, disk_full_as, is_disk_full, open_append, os_error_exit,
                  reserve_space)
from ..locks import FileLock, LockHeld, describe_holder
from .folder import RunFolder, find_run
from .records import RecordSink, logged_after

__all__ = ["STATUSES", "Run", "RunFolder", "RunLocked", "default_run_name", "find_run", "make_folder",
           "refuse_taken"]

STATUSES = ("running", "finished", "failed", "stopped", "pruned")  # pruned: ended early by a sweep's pruner


def default_run_name(cfg: Config) -> str:
    if cfg.train.env and cfg.train.env != "default":
        return cfg.train.env
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.model.model.lower()).strip("-")
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_folder(path: Path, option: str) -> None:
    """``mkdir -p``; a path that cannot be a folder is one line naming the option: a ConfigError (exit 2) when the
    path is wrong (a file is there), exit 1 for an outside cause (a read-only disk, no permission)."""
    with disk_full_as(path.parent, what=f"creating {path.name}"):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_disk_full(e):
                raise
            err = ConfigError(f"{option}={path}: cannot make that folder ({e.strerror or e})")
            err.exit_code = os_error_exit(e)
            raise err from None


def refuse_taken(run_dir: Path) -> None:
    """An explicit ``--run-dir`` for a new run must not hold a run already: one ConfigError line (use --resume)."""
    if RunFolder(run_dir).config.exists():
        raise ConfigError(f"{flag('run_dir')}={run_dir} already holds a run; pass {flag('resume')}={run_dir} to "
                          "continue it, or choose another folder")


class RunLocked(ConfigError):
    """Another process is writing the run folder (it holds the run's lock); the CLI exits 2."""


# Space set aside while a run trains and given back when it ends: on a full disk, what is left to write (the
# status, the manifest's end with the reason) still fits.
RESERVE_BYTES = 1 << 20


class Run:
    """The folder of one training run; rank 0 writes it, holding its lock (``RUN/lock``) for the whole run.
    ``sinks`` get every record and the final status too (the trackers: whoever starts them adds them)."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.folder = RunFolder(path)
        self.path = self.folder.path
        self.writer = writer  # False on DDP ranks other than 0: they read the folder, never write it
        self.sinks: list[RecordSink] = []
        self._lock: FileLock | None = None

    @property
    def ckpt_dir(self) -> Path:
        """``checkpoints/``; the writer makes it a real folder (a symbolic link there is refused, naming it)."""
        return self.folder.owned(self.folder.checkpoints) if self.writer else self.folder.checkpoints

    def lock(self) -> "Run":
        """Take the run's OS lock (fcntl.flock, released when the process ends, kill -9 included); a run
        another process is training or resuming is refused, naming that process."""
        if self.writer and self._lock is None:
            lock = FileLock(self.folder.lock)
            try:
                lock.acquire()
            except LockHeld as e:
                raise RunLocked(f"run folder {self.path} is in use by {describe_holder(e.holder)}: another "
                                "training or resume is writing it. Wait for it to end, or stop it with "
                                f"`dogcat ctl {self.path} stop`") from None
            except OSError as e:  # not a folder we can write, or a link planted where the lock goes
                if os_error_exit(e) == 1:  # a read-only disk, no permission: an outside cause, the OS's own line
                    raise
                raise RunLocked(f"cannot lock the run folder {self.path} ({lock.path}: {e.strerror or e})") from None
            try:  # a run folder from elsewhere: no link planted where we write or clean up
                self.folder.check_owned()
            except UnsafePath:
                lock.release()
                raise
            self._lock = lock
            reserve_space(self.folder.reserve, RESERVE_BYTES)
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
            make_folder(path, flag("run_dir"))
            run = cls(path).lock()
            try:
                refuse_taken(path)
            except ConfigError:
                run.unlock()
                raise
        else:
            base = Path(cfg.train.runs_root).expanduser() / default_run_name(cfg)
            make_folder(base.parent, flag("runs_root"))
            path, i = base, 1
            while True:  # two runs started in the same second, or a reused --name: the next free name
                try:
                    os.mkdir(path)  # atomic: of two processes racing for a name, one gets it
                    break
                except FileExistsError:
                    i += 1
                    path = base.with_name(f"{base.name}-{i}")
            run = cls(path).lock()
        try:
            atomic_write_text(run.folder.config, to_yaml(cfg))
        except BaseException:
            run.unlock()
            raise
        return run

    def set_status(self, status: str, error: BaseException | None = None) -> None:
        """Write ``status``; a final one also goes to each sink (the trackers complete the manifest with the
        error that ended the run, and close). A run that failed on a full disk first gives back its reserve
        (see :meth:`lock`), so that these last small records can still be written whole."""
        assert status in STATUSES
        if not self.writer:
            return
        if status != "running":
            self._free_reserve()
        atomic_write_text(self.folder.status_file, status + "\n")
        if status != "running":
            for sink in self.sinks:
                sink.finish(status, error)

    def _free_reserve(self) -> None:
        self.folder.reserve.unlink(missing_ok=True)

    def status(self) -> str:
        return self.folder.status()

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and flush it, so a crash loses at most this line; a write
        that fails (disk full) is cut back off, so no half line stays."""
        if not self.writer:
            return
        line = json.dumps({"time": round(time.time(), 3), **record}) + "\n"
        path = self.folder.metrics
        with disk_full_as(self.path, len(line), f"appending to {path.name}"), \
                open_append(path, "metrics file", encoding="utf-8") as f:  # never through a link
            end = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError:
                f.truncate(end)
                raise
        for sink in self.sinks:  # the same records, on the same step axis, to the trackers
            sink.log_record(record)

    def records(self) -> list[dict[str, Any]]:
        """The logged records (RunFolder.records: a line cut short by a kill is skipped)."""
        return self.folder.records()

    def rewind_log(self, step: int, epoch: int) -> int:
        """Drop records logged after the checkpoint a resume starts from (a killed run may have logged
        steps it never saved); the resumed run logs them again on the same step axis. Returns the count."""
        if not self.writer:
            return 0
        records = self.records()
        keep = [r for r in records if not logged_after(r, step, epoch)]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_text(self.folder.metrics, text)
        return len(records) - len(keep)
