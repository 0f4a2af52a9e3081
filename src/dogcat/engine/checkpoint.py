"""Checkpoints: full-state dicts of tensors and plain data, written atomically, loaded with weights_only."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes
from ..models.weights import torch_load

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus the format version) atomically: a crash leaves the old file or the new one."""
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(state, f))


REQUIRED = ("format_version", "model", "epoch", "global_step", "config")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a dogcat checkpoint on the CPU with ``weights_only=True``; a file without the keys of one fails."""
    ckpt = torch_load(path)
    missing = [k for k in REQUIRED if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED)
    if missing:
        raise ValueError(f"{path} is not a dogcat checkpoint (missing {', '.join(missing)})")
    return ckpt


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same bytes as ``src``, atomically (a hard link costs no disk; copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


TOP = re.compile(r"top-(\d{4,})-(\w+)=(-?[\d.]+(?:e-?\d+)?|nan|inf|-inf)\.pt$")


class Checkpoints:
    """A run's ``checkpoints/`` folder: ``last.pt`` (the resume point), ``best.pt``, the top-k epochs by
    the monitored metric (``top-0003-val_accuracy=0.9125.pt``) and archives every N epochs
    (``epoch-0010.pt``). The bookkeeping is read from the file names, so it continues correctly after a
    resume; every new file is complete before an old one is deleted, and nothing outside the folder is
    touched."""

    def __init__(self, folder: Path, monitor: str = "val_accuracy", keep_top_k: int = 3,
                 every_epochs: int = 0) -> None:
        self.folder, self.monitor, self.k, self.every = folder, monitor, keep_top_k, every_epochs
        self.last, self.best = folder / "last.pt", folder / "best.pt"

    def clean_temps(self) -> list[Path]:
        """Remove temp files a killed writer left behind (they were never renamed, so never taken for whole)."""
        stale = list(self.folder.glob(".*.tmp-*")) if self.folder.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def save(self, state: dict[str, Any], epoch_end: bool = False, is_best: bool = False,
             metric: float | None = None) -> None:
        """Write ``last.pt``; at an epoch's end also update best, top-k and the archive."""
        save_checkpoint(self.last, state)
        if not epoch_end:
            return
        epoch = int(state["epoch"])
        if is_best:
            link_or_copy(self.last, self.best)
        if self.every and epoch % self.every == 0:
            link_or_copy(self.last, self.folder / f"epoch-{epoch:04d}.pt")
        if self.k > 0 and metric is not None:
            link_or_copy(self.last, self.folder / f"top-{epoch:04d}-{self.monitor}={metric:.6g}.pt")
            for stale in self.top()[self.k:]:
                stale.unlink(missing_ok=True)

    def top(self) -> list[Path]:
        """The top-k files, best first (ties: the earlier epoch first)."""
        found = [(float(m.group(3)), int(m.group(1)), p) for p in self.folder.glob("top-*.pt")
                 if (m := TOP.match(p.name)) and m.group(2) == self.monitor]
        sign = -1 if self.monitor.endswith("accuracy") else 1
        return [p for v, e, p in sorted(found, key=lambda t: (sign * t[0], t[1]))]

    def load_latest(self) -> tuple[dict[str, Any], Path]:
        """``last.pt``, or, when it is unreadable (truncated, corrupt), the newest checkpoint that loads."""
        try:
            return load_checkpoint(self.last), self.last
        except Exception as first:  # noqa: BLE001 - any failure to read means: try an older file
            others = sorted((p for p in self.folder.glob("*.pt") if p.name != "last.pt"),
                            key=lambda p: p.stat().st_mtime, reverse=True)
            for other in others:
                try:
                    ckpt = load_checkpoint(other)
                except Exception:  # noqa: BLE001
                    continue
                warnings.warn(f"{self.last} is unreadable ({str(first).splitlines()[0][:200]}); "
                              f"resuming from {other} (epoch {ckpt['epoch']}, step {ckpt['global_step']}) instead")
                return ckpt, other
            raise ValueError(f"no readable checkpoint in {self.folder}: {self.last} failed with {first}") from first
