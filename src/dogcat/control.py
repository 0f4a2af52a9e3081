"""Steering a running training: signals (SIGTERM / SIGINT stop it at the next step boundary, checkpointed
and resumable) and a file inbox for ``dogcat ctl`` commands (read by ``engine/steering.py``, applied by the
epoch loop's ``after_step``).

The inbox lives in a folder it is given: a run's ``control/`` (``RunFolder.control``, which knows the run
folder's layout; this module sits below it and knows only the inbox's own files)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Callable

from .config import DogcatError
from .console import escape
from .io import atomic_write_text, check_dir, read_small, safe_dir
from .locks import process_alive, this_process
from .reading import loads_json

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


COMMAND_SUFFIX = ".json"  # the inbox's command files; `ctl` names them <time_ns>-<pid>.json
COMMAND_BYTES = 64 << 10  # a command file is a line of JSON; anything bigger is not one of ours
MALFORMED_AFTER = 2.0     # seconds after which an unparsable command file is answered, not waited for


def _dirs(control_dir: Path) -> tuple[Path, Path, Path]:
    base = Path(control_dir)
    return base / "inbox", base / "done", base / "pid"


def _write_json(path: Path, obj: dict) -> None:
    """Whole or not at all: a mkstemp file in the same folder, renamed (readers never see half a command)."""
    atomic_write_text(path, json.dumps(obj))


class Inbox:
    """The run's side. Files work over SSH and tmux and need no port; rank 0 alone reads them.

    The inbox is data anyone with access to the folder can drop files into: a command file (a ``*.json`` name)
    that is not a command (not JSON, no text ``command``, a folder, a link, a FIFO) is answered with an error and
    removed, never raised; a command sent before this process started reading (left over from a killed session)
    is answered "discarded", never run. Only what is the inbox's own is deleted: ``control/``, ``inbox/`` and
    ``done/`` must be real folders (a symbolic link is refused before the training starts), the inbox is read and
    cleaned through a descriptor of that real folder, and only ``*.json`` entries are removed, each by its name
    (a link itself, never its target; a folder only when empty). Other names are left alone, warned about once."""

    def __init__(self, control_dir: Path, min_interval: float = 0.2) -> None:
        control_dir = Path(control_dir)
        self.inbox, self.done, self.pidfile = _dirs(control_dir)
        safe_dir(control_dir)
        safe_dir(self.inbox, top=control_dir)
        safe_dir(self.done, top=control_dir)
        # the folder checked above, whatever its name points to later: every listing and removal goes through it
        self._fd: int | None = os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.started = time.time()
        self.min_interval, self._last = min_interval, 0.0
        self._seen: dict[str, float] = {}  # unparsable files: when first seen (a slow writer may still finish)
        self._left: set[str] = set()  # answered but not removable, or not a command file's name: not read again
        self.poll()  # what an earlier session left is answered "discarded" now, whether or not a step follows
        _write_json(self.pidfile, this_process())  # from here on `dogcat ctl` may send

    def poll(self) -> list[tuple[str, str]]:
        """``[(name, command)]`` waiting, oldest first; at most one directory listing per ``min_interval``."""
        now = time.monotonic()
        if self._fd is None or now - self._last < self.min_interval:
            return []
        self._last = now
        out = []
        with os.scandir(self._fd) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            if name.startswith(".") or name in self._left:
                continue  # a writer's temp file (ctl renames it into place when whole), or dealt with
            if not name.endswith(COMMAND_SUFFIX):
                self._left.add(name)
                log.warning(f"ctl: {escape(name)}: not a command file (*{COMMAND_SUFFIX}); left alone")
                continue
            command, error = self._read(self.inbox / name)
            if command is None and error is None:
                continue  # not whole yet: seen again next time
            if not self._remove(name):  # cannot remove it (a full folder, not ours): answer once, never run it
                self._left.add(name)
                error = error or f"could not be removed from {self.inbox}, so it is not run; ignored"
            if error is not None:
                log.warning(f"ctl: {escape(name)}: {error}")  # anyone may name a file in the inbox
                self.ack(name, {"ok": False, "message": error})
            else:
                out.append((name, command))
        return out

    def _remove(self, name: str) -> bool:
        """Delete the inbox entry ``name`` itself (a link, not its target; a folder only when empty)."""
        try:
            os.unlink(name, dir_fd=self._fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            try:
                os.rmdir(name, dir_fd=self._fd)
            except OSError:
                return False
        except OSError:
            return False
        return True

    def _read(self, f: Path) -> tuple[str | None, str | None]:
        """``(command, None)``, ``(None, error)`` or ``(None, None)`` for a file that may still be written."""
        try:
            msg = loads_json(read_small(f, COMMAND_BYTES, follow=False).decode("utf-8"))  # nesting capped
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_pid(control_dir: Path) -> int | None:
    """The pid of the training process reading ``control_dir`` (a run's ``control/``), or None when none is
    running. The pid file records the process's start time too, so a pid reused after a kill -9 is not taken
    for the training."""
    _, _, pidfile = _dirs(control_dir)
    try:
        info = loads_json(read_small(pidfile, 4096).decode("utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = process_alive(pid, info.get("start"), info.get("host"))
    return pid if alive is not False else None  # None: another host on a shared filesystem; trust the file


def _wait_for_start(control_dir: Path, what: str, timeout: float, starting: Callable[[], str | None] | None) -> None:
    """Wait (up to ``timeout`` seconds) for a starting run to begin reading commands; a run nobody is training is
    :class:`NotRunning` at once. ``starting()`` names the process starting it, or None (see :func:`send`)."""
    holder = starting() if starting is not None else None
    if holder is None:
        raise NotRunning(f"no training process is running in {what}")
    log.info(f"the run in {what} is starting ({holder}); waiting up to {timeout:.0f}s for it to read commands")
    t0 = time.monotonic()
    while running_pid(control_dir) is None:
        if starting() is None:  # it failed while starting, or it was finishing, not starting
            raise NotRunning(f"no training process is running in {what}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the run in {what} is still starting after {timeout:.0f}s (loading data or "
                               "building the model); send the command again later, or raise --timeout")
        time.sleep(0.1)


def send(control_dir: Path, command: str, timeout: float = 60.0, run: str | None = None,
         starting: Callable[[], str | None] | None = None) -> dict:
    """Deliver ``command`` to the training process reading ``control_dir`` (a run's ``control/``) and wait for
    its answer (a dict with ``ok``, ``message``). ``run`` names the run in messages (default: the folder).
    ``starting()`` names the process that is starting the run (it holds the run's lock but reads no commands yet:
    it loads data and builds the model first), or None; such a run is waited for, within the same ``timeout``."""
    control_dir = Path(control_dir)
    what = run or str(control_dir)
    t0 = time.monotonic()
    if running_pid(control_dir) is None:
        _wait_for_start(control_dir, what, timeout, starting)
    inbox, done, _ = _dirs(control_dir)
    for folder in (inbox, done):  # a planted link would take the command, and our clean-up, elsewhere
        check_dir(folder, top=control_dir.parent)
    name = f"{time.time_ns()}-{os.getpid()}{COMMAND_SUFFIX}"
    _write_json(inbox / name, {"command": command, "sent": time.time()})  # whole before the trainer can see it
    while time.monotonic() - t0 < timeout:
        answer = done / name
        if answer.exists():
            try:
                result = loads_json(read_small(answer, COMMAND_BYTES).decode("utf-8"))
            except (OSError, ValueError):
                result = None
            answer.unlink(missing_ok=True)
            if not isinstance(result, dict) or "ok" not in result:
                return {"ok": False, "message": f"unreadable answer from {what}"}
            result.setdefault("message", "")
            return result
        if running_pid(control_dir) is None:
            raise NotRunning(f"the training process in {what} ended before answering")
        time.sleep(0.05)
    (inbox / name).unlink(missing_ok=True)  # not taken: withdraw it, so it does not fire later
    raise TimeoutError(f"no answer from {what} within {timeout:.0f}s (a step may take longer: --timeout)")
