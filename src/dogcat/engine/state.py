"""Where a training is: :class:`TrainState`, the counters a checkpoint holds and a resume puts back.

Settings are not here (they are read from the config, so ``dogcat ctl set`` changes them in one place), nor
the parts (model, optimizer, ...): only the position and what was learnt about the run so far. It is one of
the checkpoint's parts (``state``), with ``state_dict`` / ``load_state_dict`` as the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from ..metrics import is_better

log = logging.getLogger("dogcat")

# state_dict key -> field, as checkpoints of every dogcat version name them (top-level keys up to format 2)
KEYS = {"epoch": "epoch", "batch_in_epoch": "batch", "global_step": "global_step", "best_metric": "best",
        "best_epoch": "best_epoch", "nonfinite_in_a_row": "nonfinite_in_a_row",
        "early_stop_best": "plateau_best", "epochs_without_improvement": "plateau_epochs"}


@dataclass
class TrainState:
    epoch: int = 0                  # the epoch being trained, 0-based (epochs finished so far)
    batch: int = 0                  # batches of this epoch consumed so far
    global_step: int = 0            # optimizer steps so far
    best: float | None = None       # best value of --monitor so far, and the (1-based) epoch it came from
    best_epoch: int = -1
    nonfinite_in_a_row: int = 0     # optimizer steps skipped in a row for a NaN/Inf (--nonfinite=skip)
    # early stopping (--patience): the value of the last epoch that improved by more than --min-delta, and the
    # epochs since. Kept apart from ``best``: best.pt takes any gain, the patience counter only a large enough one
    plateau_best: float | None = None
    plateau_epochs: int = 0
    world: int = 1                  # processes training (DDP): ``batch`` counts batches of each of them

    def observe(self, monitor: str, value: float, min_delta: float = 0.0) -> bool:
        """Record the value of the finished epoch ``self.epoch``; True when it is the best so far."""
        if is_better(monitor, value, self.plateau_best, min_delta):
            self.plateau_best, self.plateau_epochs = value, 0
        else:
            self.plateau_epochs += 1
        if not is_better(monitor, value, self.best):
            return False
        self.best, self.best_epoch = value, self.epoch + 1
        return True

    def patience_out(self, patience: int) -> bool:
        """Early stopping is on (``patience`` > 0) and that many epochs in a row brought no improvement."""
        return patience > 0 and self.plateau_epochs >= patience

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {**{key: getattr(self, name) for key, name in KEYS.items()}, "world_size": self.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint; keys a checkpoint of an older version lacks keep their defaults. A checkpoint of
        another number of processes continues at the same share of the epoch (the same images seen in all,
        approximately: exactness is promised for the same number only)."""
        defaults = {f.name: f.default for f in fields(self)}
        for key, name in KEYS.items():
            setattr(self, name, state.get(key, defaults[name]))
        old = state.get("world_size", 1)
        if old != self.world:
            self.batch = self.batch * old // self.world
            log.warning(f"resuming a {old}-process run with {self.world}: continuing at batch {self.batch} of "
                        "the epoch; the result is not bit-identical to an uninterrupted run")
