"""Steering a running training: signals (SIGTERM / SIGINT stop it at the next step boundary, checkpointed
and resumable) and a file inbox for ``dogcat ctl`` commands (applied by ``engine/steering.py``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
import sys
import threading
from types import FrameType

from .config import DogcatError


class TrainingStopped(DogcatError):
    """Raised after a run saved and stopped on a signal; ``exit_code`` is 128 + the signal (143, 130)."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}; continue with --resume")
        self.signum, self.exit_code, self.checkpoint = signum, 128 + signum, checkpoint


class StopFlag:
    """Context manager: while active, SIGTERM and SIGINT set ``signum`` instead of killing the process;
    a second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping at the next step "
              "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)  # type: ignore[arg-type]
        self._old.clear()


# --- the file inbox: `dogcat ctl RUN COMMAND` writes, the running trainer polls at step boundaries -------

class NotRunning(DogcatError, RuntimeError):
    """No training process is running in the named run folder."""

    exit_code = 1


def _dirs(run_dir: Path) -> tuple[Path, Path, Path]:
    base = Path(run_dir) / "control"
    return base / "inbox", base / "done", base / "pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Inbox:
    """The run's side. Files work over SSH and tmux and need no port; rank 0 alone reads them."""

    def __init__(self, run_dir: Path, min_interval: float = 0.2) -> None:
        self.inbox, self.done, self.pidfile = _dirs(run_dir)
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}))
        self.min_interval, self._last = min_interval, 0.0

    def poll(self) -> list[tuple[str, str]]:
        """``[(name, command)]`` waiting, oldest first; at most one directory listing per ``min_interval``."""
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return []
        self._last = now
        out = []
        for f in sorted(self.inbox.glob("*.json")):
            try:
                out.append((f.name, json.loads(f.read_text())["command"]))
            except (OSError, ValueError, KeyError):
                continue  # half-written by a writer that does not rename; seen complete next time
            f.unlink(missing_ok=True)
        return out

    def ack(self, name: str, result: dict) -> None:
        tmp = self.done / f".{name}.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.done / name)

    def close(self) -> None:
        self.pidfile.unlink(missing_ok=True)


def running_pid(run_dir: Path) -> int | None:
    """The pid of the training process in ``run_dir``, or None when none is running (on this host)."""
    _, _, pidfile = _dirs(run_dir)
    try:
        info = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        return None
    if info.get("host") != socket.gethostname():
        return int(info["pid"])  # another machine: trust the file (shared filesystem)
    return int(info["pid"]) if _alive(int(info["pid"])) else None


def send(run_dir: Path, command: str, timeout: float = 60.0) -> dict:
    """Deliver ``command`` to the run in ``run_dir`` and wait for its answer (a dict with ``ok``, ``message``)."""
    run_dir = Path(run_dir)
    if running_pid(run_dir) is None:
        status = (run_dir / "status").read_text().strip() if (run_dir / "status").exists() else "unknown"
        raise NotRunning(f"no training process is running in {run_dir} (status: {status})")
    inbox, done, _ = _dirs(run_dir)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(json.dumps({"command": command, "sent": time.time()}))
    os.replace(tmp, inbox / name)  # complete before the trainer can see it
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        answer = done / name
        if answer.exists():
            result = json.loads(answer.read_text())
            answer.unlink(missing_ok=True)
            return result
        if running_pid(run_dir) is None:
            raise NotRunning(f"the training process in {run_dir} ended before answering")
        time.sleep(0.05)
    (inbox / name).unlink(missing_ok=True)  # not taken: withdraw it, so it does not fire later
    raise TimeoutError(f"no answer from {run_dir} within {timeout:.0f}s (a step may take longer: --timeout)")
