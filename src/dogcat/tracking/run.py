"""A run folder: resolved config, metrics.jsonl, status, checkpoints, split files, bad-file list."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, ConfigError, dump_yaml
from ..io import atomic_write_text

if TYPE_CHECKING:
    from .tracker import Tracker

STATUSES = ("running", "finished", "failed", "stopped")


def default_run_name(cfg: Config) -> str:
    if cfg.train.env and cfg.train.env != "default":
        return cfg.train.env
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.model.model.lower()).strip("-")
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_run(spec: str, runs_root: str | Path = "runs") -> Path:
    """A run folder from its path, its name under ``runs_root``, or ``latest``."""
    if spec == "latest":
        runs = [p for p in Path(runs_root).glob("*/") if (p / "config.yaml").is_file()]
        if not runs:
            raise ConfigError(f"--resume=latest: no run folders under {runs_root}")
        return max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)
    for cand in (Path(spec), Path(runs_root) / spec):
        if (cand / "config.yaml").is_file():
            return cand
    raise ConfigError(f"no run folder {spec!r} (looked for {spec}/config.yaml and {runs_root}/{spec}/config.yaml)")


class Run:
    """The folder of one training run; rank 0 writes it."""

    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path = path
        self.writer = writer  # False on DDP ranks other than 0: they read the folder, never write it
        self.ckpt_dir = path / "checkpoints"
        self.tracker: Tracker | None = None  # manifest + TensorBoard while training (tracking/tracker.py)

    @classmethod
    def create(cls, cfg: Config) -> "Run":
        """A new run folder; an explicit ``run_dir`` that already holds a run is refused (use --resume)."""
        if cfg.train.run_dir:
            path = Path(cfg.train.run_dir)
            if (path / "config.yaml").exists():
                raise ConfigError(f"--run-dir={path} already holds a run; pass --resume={path} to continue it, "
                                  "or choose another folder")
        else:
            base = Path(cfg.train.runs_root) / default_run_name(cfg)
            path, i = base, 1
            while path.exists():  # two runs started in the same second, or a reused --env
                i += 1
                path = base.with_name(f"{base.name}-{i}")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        dump_yaml(cfg, path / "config.yaml")
        return run

    def checkpoint(self, name: str) -> Path:
        return self.ckpt_dir / f"{name}.pt"

    def set_status(self, status: str, error: BaseException | None = None) -> None:
        """Write ``status``; a final one also completes the manifest and closes TensorBoard."""
        assert status in STATUSES
        if not self.writer:
            return
        atomic_write_text(self.path / "status", status + "\n")
        if status != "running" and self.tracker is not None:
            self.tracker.finish(status, error)

    def status(self) -> str:
        p = self.path / "status"
        return p.read_text().strip() if p.exists() else "unknown"

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and flush it, so a crash loses at most this line."""
        if not self.writer:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            f.flush()
        if self.tracker is not None:  # the same records, on the same step axis, to TensorBoard
            self.tracker.log_record(record)

    def records(self) -> list[dict[str, Any]]:
        """The logged records; a line cut short by a kill is skipped."""
        p = self.path / "metrics.jsonl"
        out = []
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def rewind_log(self, step: int, epoch: int) -> int:
        """Drop records logged after the checkpoint a resume starts from (a killed run may have logged
        steps it never saved); the resumed run logs them again on the same step axis. Returns the count."""
        if not self.writer:
            return 0
        records = self.records()
        keep = [r for r in records if r.get("kind") == "event" or not (
            r.get("step", 0) > step or (r.get("kind") == "epoch" and r.get("epoch", 0) > epoch))]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_text(self.path / "metrics.jsonl", text)
        return len(records) - len(keep)
