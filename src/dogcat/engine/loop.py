"""The two loops, read top to bottom: ``train_one_epoch`` (what one epoch of training does) and ``validate``
(metrics over a loader, with nothing of training needed). ``trainer.py`` builds the parts and runs the epochs."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ..config import Config
from ..data import BadFiles, Batch
from ..tracking.collect import Collector
from ..tracking.progress import Progress
from ..tracking.records import step_record
from . import distributed
from .distributed import unwrap
from .meters import EvalMeter
from .parts import Parts
from .runtime import Runtime
from .state import TrainState
from .step_end import StepEnd

log = logging.getLogger("dogcat")


def train_one_epoch(p: Parts, state: TrainState, step_end: StepEnd, cfg: Config) -> dict[str, float]:
    """Train the rest of the epoch from ``state.batch`` (0, or where a resumed run stopped); returns the epoch's
    mean loss and throughput. Leaves early, checkpointed, when ``step_end`` says stop."""
    step, rt, t = p.step, p.runtime, cfg.train
    step.model.train()
    progress = Progress(len(p.train_loader), f"epoch {state.epoch + 1}/{t.max_epoch}", p.progress, t.print_freq)
    step.optimizer.zero_grad(set_to_none=True)
    for batch in p.train_loader:
        state.batch += 1
        p.bad.add(batch.bad)
        boundary = state.batch % cfg.optim.accum_steps == 0 or state.batch == p.batches_per_epoch
        if usable(batch, p.train_loader.batch_size):
            images, labels = rt.to_device(batch.images, batch.labels)
            if p.data.batch_transform is not None:  # a uint8 batch: augmented and normalised on the device
                images = p.data.batch_transform(images, batch.seed)
            step.forward_backward(images, labels, batch.ids, boundary)
        elif rt.dist.enabled:  # under DDP every rank runs backward, with weight 0 when it has nothing
            step.repeat_last(boundary)
        if boundary and step.update(state):  # False: a non-finite step, skipped (--nonfinite=skip)
            if state.global_step % t.print_freq == 0:
                _log_window(p, state, progress)
            if step_end(state):
                break
        progress.update(len(batch.labels))
    progress.close()
    return {"loss": step.meter.mean(), "images_per_s": progress.throughput}


def usable(batch: Batch, batch_size: int | None) -> bool:
    """Not all files bad, and not a lone leftover image (BatchNorm cannot train on one) unless batches are 1."""
    n = len(batch.labels)
    return n > 1 or n == 1 == batch_size


def _log_window(p: Parts, state: TrainState, progress: Progress) -> None:
    """The training loss since the last log step, to metrics.jsonl (and TensorBoard) and the progress display."""
    window_loss, lr = p.step.meter.window(), p.step.optimizer.param_groups[0]["lr"]
    p.run.log(step_record(state.global_step, state.epoch + 1, window_loss, lr, progress.throughput))
    progress.note(loss=window_loss, lr=lr)


@torch.no_grad()
def validate(model: nn.Module, loader: Any, rt: Runtime, num_classes: int, bad: BadFiles | None = None,
             progress: str = "none", print_freq: int = 20, collect: Collector | None = None) -> dict[str, Any]:
    """Every metric of the metrics table and the confusion matrix over a whole loader, in eval mode;
    ``collect`` also keeps per-sample probabilities and the worst mistakes (tracking/collect.py). Under DDP each
    rank evaluates its shard with the plain module (no DDP collectives per forward) and the sums are reduced."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    meter = EvalMeter(num_classes)
    shown = Progress(len(loader), "validate", progress, print_freq)
    for batch in loader:
        if bad is not None:
            bad.add(batch.bad)
        if len(batch.labels):
            images, labels = rt.to_device(batch.images, batch.labels)
            with rt.autocast():
                logits = model(images)
            meter.update(logits, labels)
            if collect is not None:
                collect.add(batch.ids, images, labels, logits)
        shown.update(len(batch.labels))
    shown.close()
    model.train(was_training)
    if rt.dist.enabled:
        meter.all_reduce(lambda t: distributed.all_reduce_sum(t, rt.dist))
    return meter.compute()
