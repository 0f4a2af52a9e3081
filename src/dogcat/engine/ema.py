"""The exponential moving average of the weights (``--ema-decay``), a thin layer over timm's ``ModelEmaV3``
that is also a checkpoint part (``state_dict`` / ``load_state_dict``)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn


class WeightEma:
    """timm's ``ModelEmaV3`` of ``model`` (the plain module, not a DDP or compile wrapper), updated after every
    optimizer step; ``module`` is the averaged copy that validation and val/test/predict use."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.model, self.ema = model, ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, step: int) -> None:
        self.ema.update(self.model, step=step)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """``None``: the checkpoint has no average (EMA was off when it was written), so the average starts
        from the current weights, which the model part has loaded before this one."""
        self.ema.module.load_state_dict(state if state is not None else self.model.state_dict())


def build_ema(model: nn.Module, decay: float) -> WeightEma | None:
    """The EMA of ``model``'s weights, or None when ``decay`` is 0."""
    return WeightEma(model, decay) if decay else None
