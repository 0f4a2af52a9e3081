"""One optimizer step, in pieces: forward/backward of each micro-batch, then the update at the accumulation
boundary (finite check, clipping, the loss scaler, the optimizer, the schedule, the EMA of the weights).

Settings (``accum_steps``, ``clip_grad_norm``, ``nonfinite``, ...) are read from the config at each use, so a
``dogcat ctl set`` that changed the config applies at the next step without being copied anywhere.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from ..config import Config, DogcatError
from ..tracking.records import event_record
from .criterion import Criterion
from .distributed import any_true, unwrap
from .ema import WeightEma
from .meters import LossMeter
from .optim import Schedule
from .runtime import Runtime
from .state import TrainState

log = logging.getLogger("dogcat")


class NonFinite(DogcatError, RuntimeError):
    """A NaN/Inf loss or gradient under ``--nonfinite=stop`` (or too many skipped in a row)."""

    exit_code = 3


class LastBatch(NamedTuple):
    """The last micro-batch trained on (for ``dogcat ctl debug``, and for a rank with nothing to train on)."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    loss: torch.Tensor


class TrainStep:
    """A training step and what it changes: the model, optimizer, schedule, loss scaler, criterion, EMA and the
    loss sums. ``forward_backward`` per micro-batch, ``update`` at the accumulation boundary."""

    def __init__(self, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Schedule,
                 scaler: torch.amp.GradScaler, criterion: Criterion, ema: WeightEma | None, runtime: Runtime,
                 log_event: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.scaler, self.criterion, self.ema, self.rt = scaler, criterion, ema, runtime
        self.meter = LossMeter(runtime.device, runtime.dist)
        self.last: LastBatch | None = None
        self.log_event = log_event or (lambda record: None)
        # walked once: model.parameters() recurses through every module (~70 us a step for a small CNN)
        self.params = [p for p in model.parameters() if p.requires_grad]

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated (and that val/test/predict load): the EMA's when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str], boundary: bool) -> None:
        """One micro-batch: mixup/cutmix, forward under autocast, backward of loss / accum_steps."""
        images, targets = self.criterion(images, labels)  # mixup/cutmix (soft targets), or as they are
        accum = self.cfg.optim.accum_steps
        with self._no_sync(boundary), self.rt.autocast():
            loss = self.criterion.loss(self.model(images), targets)
            self.scaler.scale(loss / accum if accum > 1 else loss).backward()
        self.meter.add(loss, len(labels))
        self.last = LastBatch(images, labels, ids, loss)

    def repeat_last(self, boundary: bool) -> None:
        """Under DDP every rank must run backward (gradients are all-reduced there): a rank whose batch was
        unusable (all files bad, or a lone leftover for BatchNorm) repeats its last one with weight 0."""
        if self.last is None:
            return
        with self._no_sync(boundary), self.rt.autocast():
            loss = self.criterion.loss(self.model(self.last.images), self.last.labels) * 0.0
            self.scaler.scale(loss).backward()

    def update(self, state: TrainState) -> bool:
        """At an accumulation boundary: check, clip, step the optimizer, schedule and EMA; False when the step
        was skipped for a non-finite loss or gradient (``--nonfinite=skip``)."""
        ok, norm = self._finite(state)
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)  # drop this step's gradients
            return False
        clip = self.cfg.optim.clip_grad_norm
        if clip:
            self.scaler.unscale_(self.optimizer)  # fp16: the norm was not computed by the check (norm is None)
            if norm is None:
                nn.utils.clip_grad_norm_(self.params, clip)
            else:  # the check's norm, of these same (unscaled) gradients
                nn.utils.clip_grads_with_norm_(self.params, clip, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.global_step += 1
        if self.ema is not None:
            self.ema.update(state.global_step)
        return True

    def _finite(self, state: TrainState) -> tuple[bool, torch.Tensor | None]:
        """(True, the gradients' total norm or None) or (False, None) to skip the step; raises NonFinite.

        With ``--clip-grad-norm`` the norm is needed anyway: it is checked (with the loss, as one sum, finite only
        when both are) and returned, so the clipping reuses it. Without, one fused pass over every gradient
        looks for inf/NaN: GradScaler's own kernel (``_amp_foreach_non_finite_check_and_unscale_``, here
        scaling by exactly 1), 7 us against 100 us for the norm on a small CNN's 17 tensors (Python's share of
        a norm over a list). With fp16 loss scaling an inf gradient is the scaler's business (it skips that
        step and lowers the scale), so only the loss is checked then. Either way one host sync per step: the
        price of never applying a NaN update."""
        if self.last is None:
            return True, None
        loss, norm = self.last.loss.detach(), None
        grads = [p.grad for p in self.params if p.grad is not None] if not self.scaler.is_enabled() else []
        if grads and self.cfg.optim.clip_grad_norm:
            norm = torch.nn.utils.get_total_norm(grads)
            bad = not bool(torch.isfinite(loss + norm))
        elif grads:
            found = torch.zeros(1, device=loss.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=loss.device))
            bad = bool(found.bool() | ~torch.isfinite(loss))
        else:
            bad = not bool(torch.isfinite(loss))
        if not any_true(bad, self.rt.dist, self.rt.device):  # under DDP all ranks decide together
            state.nonfinite_in_a_row = 0
            return True, norm
        first = next((n for n, p in self.model.named_parameters()
                      if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
        where = (f"at step {state.global_step + 1} (epoch {state.epoch + 1}, batch {state.batch}): loss "
                 f"{loss.item():.4g}; first layer with a non-finite gradient: {first or 'none (the loss itself)'}")
        state.nonfinite_in_a_row += 1
        t = self.cfg.train
        if t.nonfinite == "skip" and state.nonfinite_in_a_row < t.nonfinite_max_skips:
            self.log_event(event_record("nonfinite_skip", step=state.global_step, epoch=state.epoch + 1,
                                        batch=state.batch, first_layer=first))
            log.warning(f"non-finite {where}; batch skipped ({state.nonfinite_in_a_row} in a row)")
            return False, None
        if t.nonfinite == "skip":
            where += f"; {state.nonfinite_in_a_row} non-finite batches in a row (--nonfinite-max-skips)"
        raise NonFinite(f"non-finite {where}. The last good checkpoint is kept; lower --lr, set --clip-grad-norm "
                        "or --nonfinite=skip, then --resume")

    def _no_sync(self, boundary: bool) -> Any:
        """DDP: skip the gradient all-reduce on accumulation micro-batches (it happens at the boundary)."""
        return self.model.no_sync() if hasattr(self.model, "no_sync") and not boundary else contextlib.nullcontext()
