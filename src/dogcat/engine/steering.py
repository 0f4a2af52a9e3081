"""What steers a running training, read after each optimizer step (:class:`Steering`): the ``dogcat ctl``
inbox, a signal, the debug trigger file, ``--max-steps`` and ``--save-every-steps``. ``poll`` turns them into
the commands due at this step (commands.py); the epoch loop applies them (``loop.after_step``), the live
options through :func:`set_live`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import LIVE, OPTIONS, Config, flag, load_config, parse_overrides, resolve_key
from ..control import Inbox, StopFlag
from ..tracking.records import event_record
from .commands import Command, Debug, Eval, Invalid, Save, Set, Stop
from .distributed import Dist, any_true, broadcast
from .state import TrainState
from .step import TrainStep

log = logging.getLogger("dogcat")


COMMANDS = {"save": Save, "eval": Eval, "stop": Stop, "debug": Debug}  # and set: what `dogcat ctl` may send


class Steering:
    """Reads what steers the run and says which commands are due at a step, the same on every rank.

    Rank 0 alone reads the inbox and the debug file and broadcasts what it read; a signal may reach one process
    only, so every rank's flag counts. ``answer`` replies to a command from the inbox (rank 0) and records it in
    metrics.jsonl, before the reply, so that when ``dogcat ctl`` has its answer the record is there."""

    def __init__(self, cfg: Config, control: Path, dist: Dist, device: torch.device, signals: StopFlag | None = None,
                 debug_file: str | None = None, log_event: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.dist, self.device, self.signals = cfg, dist, device, signals
        self.debug_file = debug_file
        self.log_event = log_event or (lambda record: None)
        self.inbox = Inbox(control) if dist.main else None  # the run's control/ folder
        self.debug_seen: tuple | None = None  # the debug file's version last acted on

    def poll(self, state: TrainState) -> list[Command]:
        """The commands due after the optimizer step ``state.global_step``, in this order: the inbox's (oldest
        first), a Debug for a new debug file (checked every ``print_freq`` steps), a Save every
        ``save_every_steps``, a Stop for a signal or ``--max-steps``."""
        t = self.cfg.train
        lines = self.inbox.poll() if self.inbox is not None else []  # at most every 0.2 s: a listing
        debug = self.dist.main and state.global_step % t.print_freq == 0 and self.debug_file_changed()
        if self.dist.enabled:
            lines, debug = broadcast((lines, debug), self.dist)
        commands = [parse(text, reply=name) for name, text in lines]
        if debug:
            commands.append(Debug(source=f"debug file {self.debug_file}"))
        if t.save_every_steps and state.global_step % t.save_every_steps == 0:
            commands.append(Save())
        signalled = self.signals is not None and self.signals.signum is not None
        max_steps = bool(t.max_steps and state.global_step >= t.max_steps)
        if any_true(signalled or max_steps, self.dist, self.device):
            commands.append(Stop(why="max_steps" if max_steps and not signalled else "signal"))
        return commands

    def debug_file_changed(self) -> bool:
        """The template's trick, made safe for shared machines: each new version (inode, size, mtime) of
        ``--debug-file`` (default ``RUN/control/debug``) asks for one debug, on a terminal the debugger, else a
        dump. A file owned by another user is ignored (with one warning): on a shared /tmp anyone could make it."""
        try:
            st = os.stat(self.debug_file) if self.debug_file else None
        except OSError:
            return False
        version = st and (st.st_ino, st.st_size, st.st_mtime_ns)
        if st is None or version == self.debug_seen:
            return False
        self.debug_seen = version
        if st.st_uid != os.getuid():
            log.warning(f"ignoring debug file {self.debug_file}: it belongs to user id {st.st_uid}, not to you")
            return False
        return True

    def answer(self, command: Command, result: dict[str, Any], state: TrainState) -> None:
        """Reply to ``command`` and record it; a command of our own (a due save, --max-steps) needs neither."""
        if isinstance(command, Debug) and command.reply is None and self.dist.main:
            log.info(f"{command.source}: {result['message']}")
        if command.reply is None or self.inbox is None:
            return
        result = {**result, "step": state.global_step, "epoch": state.epoch + 1}
        self.log_event(event_record("control", command=str(command), **result))
        self.inbox.ack(command.reply, result)
        log.info(f"ctl {command}: {result['message']}")

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()  # `dogcat ctl` now says: no process running


def parse(text: str, reply: str | None = None) -> Command:
    """A ``dogcat ctl`` line as a command (``set lr=0.01``, ``save``, ...); anything else is :class:`Invalid`."""
    verb, _, arg = text.strip().partition(" ")
    if verb == "set":
        key, eq, value = arg.strip().partition("=")
        if not eq:
            return Invalid(text, f"set needs KEY=VALUE, got {arg!r}; live options: {', '.join(LIVE)}", reply=reply)
        return Set(key.strip(), value.strip(), reply=reply)
    if verb in COMMANDS:
        return COMMANDS[verb](reply=reply)
    return Invalid(text, f"unknown command {text!r}; commands: set KEY=VALUE, save, eval, stop, debug", reply=reply)


def set_live(cfg: Config, step: TrainStep, key: str, raw: str) -> tuple[str, Any, Any]:
    """``dogcat ctl set KEY=VALUE``: check the value as the command line would, put it in the config (every part
    reads its settings from there) and in the two parts that hold a value of their own, the schedule (its base
    lr, its horizon) and the optimizer (its weight decay). Returns ``(option, old, new)``."""
    leaf = resolve_key(key).split(".")[1]
    if leaf not in LIVE:
        raise ValueError(f"{flag(leaf)} cannot change while training; live options: "
                         f"{', '.join(LIVE)} (others: stop, then --resume)")
    sec = OPTIONS[leaf][0]
    new_cfg = load_config(parse_overrides([f"--{leaf}={raw}"]), base=cfg)  # validated like the CLI
    old, new = getattr(getattr(cfg, sec), leaf), getattr(getattr(new_cfg, sec), leaf)
    setattr(getattr(cfg, sec), leaf, new)
    if leaf == "lr":  # the new base lr, at the schedule's current point (never a ratio of the old one)
        step.scheduler.set_base_lr(new)
    elif leaf == "weight_decay":
        for g in step.optimizer.param_groups:
            g["weight_decay"] = new
    elif leaf == "max_epoch":
        step.scheduler.set_max_epoch(new)
    return leaf, old, new
