"""What may happen after an optimizer step, as values: :class:`Set`, :class:`Save`, :class:`Eval`, :class:`Stop`,
:class:`Debug` (and :class:`Invalid`, a ``dogcat ctl`` line that is none of them).

``Steering.poll`` (steering.py) decides which are due at a step, from the ``dogcat ctl`` inbox, a signal, the
debug trigger file, ``--max-steps`` and ``--save-every-steps``; the epoch loop applies them in one place
(``loop.after_step``). A command that came from the inbox carries ``reply``, the inbox file it answers.
Values, so that under DDP rank 0's reading is broadcast as it is and every rank applies the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class Command:
    reply: str | None = field(default=None, kw_only=True)  # the inbox file to answer; None: not from dogcat ctl

    def __str__(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True)
class Set(Command):
    """Change a live option (``steering.LIVE``); ``value`` is the text as typed, checked as the command line's."""

    key: str
    value: str

    def __str__(self) -> str:
        return f"set {self.key}={self.value}"


@dataclass(frozen=True)
class Save(Command):
    """Write ``last.pt`` now."""


@dataclass(frozen=True)
class Eval(Command):
    """Validate now; the metrics go back with the answer and into metrics.jsonl."""


@dataclass(frozen=True)
class Stop(Command):
    """Checkpoint and end the run; ``why`` is ``ctl``, ``max_steps`` or ``signal`` (then it exits 128 + N)."""

    why: str = "ctl"


@dataclass(frozen=True)
class Debug(Command):
    """The debugger on a terminal, else a debug dump; ``source``: who asked (ctl, or the debug file's path)."""

    source: str = "ctl"


@dataclass(frozen=True)
class Invalid(Command):
    """A line from the inbox that is no command: answered with ``reason``, nothing else happens."""

    text: str
    reason: str

    def __str__(self) -> str:
        return self.text

