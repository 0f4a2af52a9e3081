"""Checkpoints: full-state dicts of tensors and plain data, written atomically, loaded with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..models.weights import torch_load

FORMAT_VERSION = 1


def fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write: "Any") -> None:
    """Write via ``write(fileobj)`` to a temp file in the same folder, fsync, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus the format version) atomically: a crash leaves the old file or the new one."""
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a dogcat checkpoint on the CPU with ``weights_only=True``."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise ValueError(f"{path} is not a dogcat checkpoint (no format_version)")
    return ckpt
