"""Safe file writes every layer uses: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a crash) sees the old file or the new one, never half of one. This sits just above config.py
and imports nothing else of dogcat, so data, engine, tracking and the CLI can all use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


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


def atomic_write_bytes(path: Path, write: Callable[[Any], Any]) -> None:
    """Write via ``write(fileobj)`` to a temp file in the same folder, fsync, rename over ``path``."""
    path = Path(path)
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
