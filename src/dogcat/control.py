"""Signals: SIGTERM / SIGINT ask a run to stop at the next step boundary (checkpointed, resumable)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class TrainingStopped(Exception):
    """Raised after a run saved and stopped on a signal; ``exit_code`` is 128 + the signal (143, 130)."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}")
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
