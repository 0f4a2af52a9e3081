"""Steering a running training: signals (SIGTERM / SIGINT stop it at the next step boundary, checkpointed
and resumable) and a file inbox for ``dogcat ctl`` commands (read by ``engine/steering.py``, applied by the
epoch loop's ``after_step``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from .config import ConfigError, DogcatError
from .io import atomic_write_text, read_small
from .locks import process_alive, this_process

log = logging.getLogger("dogcat")



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


COMMAND_BYTES = 64 << 10  # a command file is a line of JSON; anything bigger is not one of ours
MALFORMED_AFTER = 2.0     # seconds after which an unparsable command file is answered, not waited for


def _dirs(run_dir: Path) -> tuple[Path, Path, Path]:
    base = Path(run_dir) / "control"
    return base / "inbox", base / "done", base / "pid"


def _write_json(path: Path, obj: dict) -> None:
    """Whole or not at all: a mkstemp file in the same folder, renamed (readers never see half a command)."""
    atomic_write_text(path, json.dumps(obj))


class Inbox:
    """The run's side. Files work over SSH and tmux and need no port; rank 0 alone reads them.

    The inbox is data anyone with access to the folder can drop files into: a file that is not a command
    (not JSON, no text ``command``, a folder, a link, a FIFO) is answered with an error and removed, never
    raised; a command sent before this process started reading (left over from a killed session) is
    answered "discarded", never run."""

    def __init__(self, run_dir: Path, min_interval: float = 0.2) -> None:
        self.inbox, self.done, self.pidfile = _dirs(run_dir)
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.min_interval, self._last = min_interval, 0.0
        self._seen: dict[str, float] = {}  # unparsable files: when first seen (a slow writer may still finish)
        self.poll()  # what an earlier session left is answered "discarded" now, whether or not a step follows
        _write_json(self.pidfile, this_process())  # from here on `dogcat ctl` may send

    def poll(self) -> list[tuple[str, str]]:
        """``[(name, command)]`` waiting, oldest first; at most one directory listing per ``min_interval``."""
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return []
        self._last = now
        out = []
        for f in sorted(self.inbox.iterdir()):
            if f.name.startswith("."):
                continue  # a writer's temp file (ctl renames it into place when whole)
            command, error = self._read(f)
            if command is None and error is None:
                continue  # not whole yet: seen again next time
            try:
                if f.is_dir() and not f.is_symlink():
                    shutil.rmtree(f)
                else:
                    f.unlink()
            except OSError:
                continue  # cannot remove it (not ours): leave it, and do not answer it again and again
            if error is not None:
                log.warning(f"ctl: {f.name}: {error}")
                self.ack(f.name, {"ok": False, "message": error})
            else:
                out.append((f.name, command))
        return out

    def _read(self, f: Path) -> tuple[str | None, str | None]:
        """``(command, None)``, ``(None, error)`` or ``(None, None)`` for a file that may still be written."""
        try:
            msg = json.loads(read_small(f, COMMAND_BYTES, follow=False).decode("utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            first = self._seen.setdefault(f.name, time.monotonic())
            if time.monotonic() - first < MALFORMED_AFTER and isinstance(e, (json.JSONDecodeError, UnicodeError)):
                return None, None
            self._seen.pop(f.name, None)
            return None, f"not a command file ({type(e).__name__}: {' '.join(str(e).split())[:200]}); ignored"
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str) or not msg["command"].strip():
            return None, ('malformed command: expected {"command": "set KEY=VALUE | save | eval | stop | debug"}, '
                          f"got {str(msg)[:200]!r}; ignored")
        sent = msg.get("sent")
        if not isinstance(sent, (int, float)) or sent < self.started:
            return None, (f"discarded {msg['command'][:100]!r}: sent before this training process started "
                          "reading commands (left from an earlier session); send it again")
        return msg["command"][:1000], None

    def ack(self, name: str, result: dict) -> None:
        try:
            _write_json(self.done / name, result)
        except OSError as e:  # a full disk must not end the training over an answer
            log.warning(f"ctl: could not answer {name}: {e}")

    def close(self) -> None:
        self.pidfile.unlink(missing_ok=True)


def running_pid(run_dir: Path) -> int | None:
    """The pid of the training process in ``run_dir``, or None when none is running. The pid file records the
    process's start time too, so a pid reused after a kill -9 is not taken for the training."""
    _, _, pidfile = _dirs(run_dir)
    try:
        info = json.loads(read_small(pidfile, 4096).decode("utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = process_alive(pid, info.get("start"), info.get("host"))
    return pid if alive is not False else None  # None: another host on a shared filesystem; trust the file


def send(run_dir: Path, command: str, timeout: float = 60.0) -> dict:
    """Deliver ``command`` to the run in ``run_dir`` and wait for its answer (a dict with ``ok``, ``message``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"no run folder at {run_dir} (it has no config.yaml)")
    if running_pid(run_dir) is None:
        status = (run_dir / "status").read_text(errors="replace").strip() if (run_dir / "status").exists() \
            else "unknown"
        raise NotRunning(f"no training process is running in {run_dir} (status: {status})")
    inbox, done, _ = _dirs(run_dir)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    _write_json(inbox / name, {"command": command, "sent": time.time()})  # whole before the trainer can see it
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        answer = done / name
        if answer.exists():
            try:
                result = json.loads(read_small(answer, COMMAND_BYTES).decode("utf-8"))
            except (OSError, ValueError):
                result = None
            answer.unlink(missing_ok=True)
            if not isinstance(result, dict) or "ok" not in result:
                return {"ok": False, "message": f"unreadable answer from {run_dir}"}
            result.setdefault("message", "")
            return result
        if running_pid(run_dir) is None:
            raise NotRunning(f"the training process in {run_dir} ended before answering")
        time.sleep(0.05)
    (inbox / name).unlink(missing_ok=True)  # not taken: withdraw it, so it does not fire later
    raise TimeoutError(f"no answer from {run_dir} within {timeout:.0f}s (a step may take longer: --timeout)")
