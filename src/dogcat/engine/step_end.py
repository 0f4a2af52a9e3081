"""What happens after every optimizer step, in one place (:class:`StepEnd`): apply ``dogcat ctl`` commands,
look at the debug trigger file, decide whether to stop, write ``last.pt`` when due or when stopping."""

from __future__ import annotations

import logging
import os
from typing import Callable

from ..config import Config
from ..control import StopFlag
from .distributed import any_true
from .parts import Parts
from .state import TrainState
from .steering import Steering

log = logging.getLogger("dogcat")


class StepEnd:
    """The hook the epoch loop calls after each optimizer step; True means: stop now (checkpointed)."""

    def __init__(self, cfg: Config, p: Parts, state: TrainState, signals: StopFlag, save: Callable[[], None],
                 validate_now: Callable[[], dict], debug_file: str) -> None:
        self.cfg, self.signals, self.save, self.debug_file = cfg, signals, save, debug_file
        self.steering = Steering(cfg, p.step, state, p.run, save, validate_now, self.request_stop)
        self.stop_requested = False   # `dogcat ctl RUN stop`
        self.stopping = False         # decided at the last step: the epoch loop returns, checkpointed
        self.debug_seen: tuple | None = None  # the debug file's version last acted on

    def request_stop(self) -> None:
        self.stop_requested = True

    def __call__(self, state: TrainState) -> bool:
        t = self.cfg.train
        self.steering()
        if state.global_step % t.print_freq == 0:
            self.debug_trigger()
        signalled = self.signals.signum is not None
        max_steps = bool(t.max_steps and state.global_step >= t.max_steps)
        rt = self.steering.step.rt
        self.stopping = any_true(signalled or self.stop_requested or max_steps,  # a signal may reach one rank only
                                 rt.dist, rt.device)
        due = bool(t.save_every_steps) and state.global_step % t.save_every_steps == 0
        if self.stopping or due:
            self.save()
        return self.stopping

    def debug_trigger(self) -> None:
        """The seed's trick, made safe for shared machines: each new version (inode, size, mtime) of
        ``--debug-file`` (default ``RUN/control/debug``) stops a run on a terminal in (i)pdb once, or, without a
        terminal, writes one debug dump. A file owned by another user is ignored (with one warning): on a shared
        /tmp anyone could create it."""
        try:
            st = os.stat(self.debug_file)
        except OSError:
            return
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        if version == self.debug_seen:
            return
        self.debug_seen = version
        if st.st_uid != os.getuid():
            log.warning(f"ignoring debug file {self.debug_file}: it belongs to user id {st.st_uid}, not to you")
            return
        log.info(f"debug file {self.debug_file}: {self.steering.debug()}")

    def close(self) -> None:
        self.steering.close()
