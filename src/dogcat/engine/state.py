"""Where a training is: :class:`TrainState`, the counters a checkpoint holds and a resume puts back.

Settings are not here (they are read from the config, so ``dogcat ctl set`` changes them in one place), nor
the parts (model, optimizer, ...): only the position and what was learnt about the run so far.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..metrics import is_better

# state_dict key -> field: the checkpoint's top-level keys, as checkpoints of every dogcat version name them
KEYS = {"epoch": "epoch", "batch_in_epoch": "batch", "global_step": "global_step", "best_metric": "best",
        "best_epoch": "best_epoch", "nonfinite_in_a_row": "nonfinite_in_a_row"}


@dataclass
class TrainState:
    epoch: int = 0                  # the epoch being trained, 0-based (epochs finished so far)
    batch: int = 0                  # batches of this epoch consumed so far
    global_step: int = 0            # optimizer steps so far
    best: float | None = None       # best value of --monitor so far, and the (1-based) epoch it came from
    best_epoch: int = -1
    nonfinite_in_a_row: int = 0     # optimizer steps skipped in a row for a NaN/Inf (--nonfinite=skip)

    def observe(self, monitor: str, value: float) -> bool:
        """Record the value of the finished epoch ``self.epoch``; True when it is the best so far."""
        if not is_better(monitor, value, self.best):
            return False
        self.best, self.best_epoch = value, self.epoch + 1
        return True

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, name) for key, name in KEYS.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint; keys a checkpoint of an older version lacks keep their defaults."""
        defaults = {f.name: f.default for f in fields(self)}
        for key, name in KEYS.items():
            setattr(self, name, state.get(key, defaults[name]))
