"""What a training returns (:class:`Result`), and the ``on_epoch`` hook's type (:data:`OnEpoch`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..config import ConfigError
from .trained import load_model

# Called after each epoch (rank 0, once the epoch is logged and checkpointed) with its metrics.jsonl record;
# a returned reason ends the run there, status "pruned" (a hyperparameter sweep's pruner: dogcat/sweep/study.py).
OnEpoch = Callable[[dict[str, Any]], "str | None"]


@dataclass
class Result:
    """What a training returns; ``stopped`` when it ended early (``--max-steps``) and can be resumed;
    ``pruned``: the reason ``on_epoch`` gave for ending it early (status ``pruned``).

    ``result.model``: the trained ``nn.Module`` with the weights of the best checkpoint (EMA ones when kept),
    in eval mode; ``result.load()``: a ``dogcat.Classifier`` of it (``dogcat.train`` sets how, see
    ``inference.train``). A run of your own module loads into a copy of it."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    early_stop: str | None = None  # why early stopping ended the run (--patience); it is still finished
    pruned: str | None = None
    module: nn.Module | None = field(default=None, repr=False)  # the user's own module (train(model=module))
    opener: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    _model: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> nn.Module:
        """The best checkpoint's model (the last one when no epoch finished validation), loaded once."""
        if self._model is None:
            self._model = load_model(self.run_dir, module=copy.deepcopy(self.module) if self.module else None).model
        return self._model

    def load(self, **options: Any) -> Any:
        """A ``dogcat.Classifier`` of this run (``options``: ``checkpoint="last"``, ``device="cpu"``, ...)."""
        if self.opener is None:
            raise ConfigError(f"this Result came from dogcat.engine.trainer.train; use dogcat.load({str(self.run_dir)!r})")
        return self.opener(**options)
