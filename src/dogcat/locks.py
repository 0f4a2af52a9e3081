"""Locks and process liveness: one OS lock whose file names its holder, and whether a recorded process lives.

``fcntl.flock`` rather than a lock package: the kernel drops the lock when its process ends (kill -9 too), so
a lock is never stale, and what dogcat adds is the holder's pid, host and start time in the file, for a
refusal that names who holds it, and a start time that tells a reused pid from the process that wrote it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .io import read_small, umask


class LockHeld(RuntimeError):
    """The OS lock on ``path`` is held by another process; ``holder`` is what it wrote into the file."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked by {describe_holder(holder)}")


# ---- processes -------------------------------------------------------------------------------------------

def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # the command name (field 2) may hold spaces and parentheses: split after its closing ")"
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: Any, start: Any = None, host: Any = None) -> bool | None:
    """True / False for a process on this host; None when it ran on another host (cannot tell).

    ``start`` (from :func:`process_start`) tells a reused pid from the process that wrote it; a process
    owned by another user (PermissionError) is alive."""
    if host and host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OverflowError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # killed but not yet reaped by its parent
            return False
    except (OSError, IndexError):
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


def this_process() -> dict[str, Any]:
    """pid, host and start ticks of this process: what a lock or a pid file records."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
            "time": round(time.time(), 3)}


def describe_holder(holder: dict[str, Any]) -> str:
    when = holder.get("time")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"



# ---- the lock ---------------------------------------------------------------------------------------------

RUN_LOCK = "lock"  # RUN/lock: held by the process that trains or resumes the run, for the whole run


def is_locked(path: Path | str) -> bool | None:
    """Whether some process holds an ``flock`` on the file ``path``, asked without touching the lock (taking it,
    even for a moment, could make its real owner's start fail): Linux lists every lock in ``/proc/locks``.
    None where that list is not there (another OS); False for a missing file."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return False if not Path(path).exists() else None
    except OSError:
        return None
    for line in text.splitlines():  # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:123456 0 EOF"
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK":
            try:
                major, minor, inode = parts[5].split(":")
                found = (int(inode), int(major, 16), int(minor, 16))
            except ValueError:
                continue
            if found == (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)):
                return True
    return False

class FileLock:
    """An exclusive ``fcntl.flock`` on ``path``, held until :meth:`release` or the process ends (the kernel
    drops it on exit, kill -9 included, so a lock is never stale). The holder writes its pid, host and
    start time into the file, for the refusal to name. The holder may delete the file as it releases the
    lock (``remove=True``): a process that was waiting on the deleted file sees that its lock is on a name
    no longer there, and takes the lock again on the current file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            data = json.loads(read_small(self.path, 4096).decode("utf-8", "replace"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self, blocking: bool = False, info: dict[str, Any] | None = None) -> "FileLock":
        """Take the lock; without ``blocking`` a held lock raises :class:`LockHeld` at once."""
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd, writable = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self.path, self.holder()) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder deleted the file while we waited: lock the current one
        self.fd = fd
        if writable:
            with contextlib.suppress(OSError):
                data = json.dumps(info or this_process()).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
        return self

    def _open(self) -> tuple[int, bool]:
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o666 & ~umask()), True
        except PermissionError:  # another user's lock file: flock needs no write access
            return os.open(self.path, os.O_RDONLY | flags), False

    def release(self, remove: bool = False) -> None:
        """Let go; with ``remove`` also delete the file (done while still holding it, see the class doc)."""
        if self.fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire(blocking=True)

    def __exit__(self, *exc: object) -> None:
        self.release()

