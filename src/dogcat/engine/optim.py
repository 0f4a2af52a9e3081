"""Optimizer by name with per-layer learning rates, and one per-step learning-rate schedule."""

from __future__ import annotations

import bisect
import difflib
import inspect
import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

from ..config import Config, ConfigError, OptimConfig, freeze_of
from ..models import ModelError, head_module
from ..models.freeze import set_frozen


# torch.optim classes dogcat's training step cannot drive, and why (each crashed inside torch on the first step)
UNSUPPORTED = {
    "lbfgs": "L-BFGS re-evaluates the loss several times per step (a closure) and takes one parameter group; dogcat's "
             "step computes the loss once per mini-batch, with a group for the head and one for the backbone",
    "sparseadam": "SparseAdam takes sparse gradients only (embeddings with sparse=True); image models have dense "
                  "ones (use adam)",
    "muon": "Muon updates 2-D weight matrices only, while every model here also has biases and norm weights (it is "
            "meant to be paired with AdamW for those, which one --optimizer cannot express)",
}


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class of ``torch.optim`` that dogcat's step can drive, by lower-case name (not the ones in
    :data:`UNSUPPORTED`)."""
    return {n.lower(): c for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
            and n.lower() not in UNSUPPORTED}


def check_optimizer(name: str) -> None:
    """``--optimizer`` names a torch.optim class (any case) dogcat can drive, else one ConfigError line with the
    choices (and, for one torch has but dogcat cannot drive, why)."""
    optimizers = set(optimizer_classes())
    if name.lower() in UNSUPPORTED:
        raise ConfigError(f"option --optimizer={name!r} is not supported: {UNSUPPORTED[name.lower()]}. "
                          f"Choices: {', '.join(sorted(optimizers))}")
    if name.lower() not in optimizers:
        close = difflib.get_close_matches(name.lower(), sorted(optimizers), n=3, cutoff=0.5)
        raise ConfigError(f"option --optimizer={name!r} is not a torch.optim optimizer"
                          + (f"; did you mean {', '.join(close)}?" if close else "")
                          + f" Choices: {', '.join(sorted(optimizers))}")


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """Head at ``lr``, backbone at ``lr * backbone_lr_mult``; what ``--freeze`` names gets no gradients at all.
    Each group keeps its ``lr_mult`` (its lr over ``--lr``), so a new ``--lr`` can be set, not scaled.

    Frozen parameters are left out of the optimizer, unless ``--unfreeze-at`` will unfreeze them: then they are
    in the backbone group from the start, without gradients until that epoch (every torch optimizer skips a
    parameter whose ``grad`` is None: no update, no weight decay, no state). So the groups never change and a
    checkpoint from either side of the unfreeze epoch loads into the same optimizer: an exact resume."""
    head = head_module(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    freeze = freeze_of(cfg.model)
    if cfg.model.backbone_lr_mult != 1.0 and head is None:
        raise ConfigError(f"--backbone-lr-mult: cannot find the head of {cfg.model.model}")
    try:
        set_frozen(model, freeze, True)
    except ModelError as e:
        raise ConfigError(str(e)) from None
    params = [p for p in model.parameters() if p.requires_grad or cfg.model.unfreeze_at]
    mult = cfg.model.backbone_lr_mult
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": cfg.optim.lr, "name": "head", "lr_mult": 1.0},
              {"params": [p for p in params if id(p) not in head_ids],
               "lr": cfg.optim.lr * mult, "name": "backbone", "lr_mult": mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    check_optimizer(cfg.optim.optimizer)
    cls = optimizer_classes()[cfg.optim.optimizer.lower()]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {"lr": cfg.optim.lr}
    if "weight_decay" in accepted:
        kwargs["weight_decay"] = cfg.optim.weight_decay
    if "momentum" in accepted:
        kwargs["momentum"] = cfg.optim.momentum
    return cls(param_groups(model, cfg), **kwargs)


class OptimizerPart:
    """The optimizer as a checkpoint part. A resume keeps this run's own per-group ``lr_mult`` (a checkpoint may
    predate it) and ``weight_decay`` (it may change on resume: the groups were built from the new config)."""

    KEPT = ("lr_mult", "weight_decay")

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        kept = [{k: g[k] for k in self.KEPT if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, own in zip(self.optimizer.param_groups, kept):
            group.update(own)


class Schedule(LRScheduler):
    """Linear warm-up, then ``none | loss-rise | step | multistep | cosine``, or ``onecycle``; stepped once per optimizer step.

    ``loss-rise`` is the template's rule: at the end of an epoch whose mean training loss is higher than the
    previous epoch's, every learning rate is multiplied by ``lr_decay``. All state is plain numbers, so
    it is checkpointed by ``state_dict()`` and restored exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                 max_epoch: int) -> None:
        self.kind = cfg.scheduler
        self.lr = cfg.lr  # the base lr (x each group's lr_mult); `dogcat ctl set lr` and a resume may change it
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, steps_per_epoch * max_epoch)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.gamma, self.step_size = cfg.lr_decay, max(1, cfg.step_size)
        self.milestones = sorted(cfg.milestones)
        self.min_lr = cfg.min_lr
        self.min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        self.onecycle_pct = cfg.onecycle_pct
        self.factor = 1.0  # loss-rise: product of the decays so far
        self.prev_loss: float | None = None
        super().__init__(optimizer)

    def _scale(self, step: int) -> float:
        if self.kind == "onecycle":
            return self._onecycle(step)
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        epoch = step // self.steps_per_epoch
        if self.kind == "step":
            return self.gamma ** (epoch // self.step_size)
        if self.kind == "multistep":
            return self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.kind == "cosine":
            t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return self.factor  # none (factor stays 1) and loss-rise

    def _onecycle(self, step: int) -> float:
        """torch's OneCycleLR shape (cosine annealing): lr/25 up to lr, then down to lr/25/1e4."""
        rise = self.warmup_steps or max(1, int(self.onecycle_pct * self.total_steps))
        lo, end = 1 / 25, 1 / 25 / 1e4
        if step < rise:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * step / rise))
        t = min(1.0, (step - rise) / max(1, self.total_steps - rise))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    PROGRESS = ("last_epoch", "_step_count", "_last_lr", "factor", "prev_loss", "base_lrs")

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore progress only: the shape (kind, horizon, warm-up, milestones) comes from the current
        config, so a resumed run with a larger ``max_epoch`` stretches its cosine to the new end. A resume
        with another ``--lr`` makes it the new base lr, keeping the schedule's shape (see :meth:`set_base_lr`);
        the optimizer's state is loaded before this."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k in self.PROGRESS})
        if state_dict.get("lr", self.lr) != self.lr:
            self.set_base_lr(self.lr)

    def set_base_lr(self, lr: float) -> None:
        """Make ``lr`` the base learning rate (each group's: ``lr`` x its ``lr_mult``) and apply it at once, at
        the schedule's current point: the shape (warm-up, decays so far, cosine) is kept. A value, never a
        ratio of the old one, so an lr of 0 can be set and later changed again."""
        self.lr = lr
        self.base_lrs = [lr * g.get("lr_mult", 1.0) for g in self.optimizer.param_groups]
        self.min_ratio = self.min_lr / lr if lr > 0 else 0.0
        for group, new in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = new
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [base * self._scale(self.last_epoch) for base in self.base_lrs]

    def set_max_epoch(self, max_epoch: int) -> None:
        """A new horizon (``dogcat ctl set max_epoch``): cosine and one-cycle stretch to the new end."""
        self.total_steps = max(1, self.steps_per_epoch * max_epoch)

    def epoch_end(self, train_loss: float) -> None:
        """The template's rule: decay when the epoch's training loss rose."""
        if self.kind == "loss-rise" and self.prev_loss is not None and train_loss > self.prev_loss:
            self.factor *= self.gamma
            for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
                group["lr"] = lr
            self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.prev_loss = train_loss
