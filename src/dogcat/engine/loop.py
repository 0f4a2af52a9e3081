"""The loops, read top to bottom: ``train_one_epoch`` (what one epoch of training does), ``after_step`` (the
commands due after an optimizer step, applied in one place) and ``validate`` (metrics over a loader, with
nothing of training needed). ``trainer.py`` builds the parts and runs the epochs."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..config import Config, ConfigError, freeze_of, to_yaml
from ..data import BadFiles, Batch
from ..io import atomic_write_text
from ..metrics import summary
from ..models.freeze import set_frozen, train_mode
from ..tracking.collect import Collector
from ..tracking.progress import Progress
from ..tracking.records import event_record, step_record
from .commands import Command, Debug, Eval, Invalid, Save, Set, Stop
from .debug import debug_step
from .distributed import unwrap
from .meters import EvalMeter, MultiLabelMeter, eval_meter
from .parts import Parts, write_checkpoint
from .runtime import Runtime
from .state import TrainState
from .steering import Steering, set_live

log = logging.getLogger("dogcat")


class Epoch(NamedTuple):
    """What an epoch's training gives: its mean loss, its throughput, and the Stop that ended it early."""

    loss: float
    images_per_s: float
    stop: Stop | None


def train_one_epoch(p: Parts, state: TrainState, steering: Steering, cfg: Config) -> Epoch:
    """Train the rest of the epoch from ``state.batch`` (0, or where a resumed run stopped). Leaves early,
    checkpointed, when a command says stop."""
    step, rt, t = p.step, p.runtime, cfg.train
    train_mode(step.model)  # frozen parts' BatchNorm stays in eval mode
    progress = Progress(len(p.train_loader), f"epoch {state.epoch + 1}/{t.max_epoch}", p.progress, t.print_freq)
    step.optimizer.zero_grad(set_to_none=True)
    stop = None
    for batch in p.train_loader:
        state.batch += 1
        p.bad.add(batch.bad)
        boundary = state.batch % cfg.optim.accum_steps == 0 or state.batch == p.batches_per_epoch
        if usable(batch, p.train_loader.batch_size):
            images, labels = rt.to_device(batch.images, batch.labels)
            if p.batch_transform is not None:  # a uint8 batch: augmented and normalised on the device
                images = p.batch_transform(images, batch.seed)
            step.forward_backward(images, labels, batch.ids, boundary)
        elif rt.dist.enabled:  # under DDP every rank runs backward, with weight 0 when it has nothing
            step.repeat_last(boundary)
        if boundary and step.update(state):  # False: a non-finite step, skipped (--nonfinite=skip)
            if state.global_step % t.print_freq == 0:
                _log_window(p, state, progress)
            stop = after_step(p, state, steering.poll(state), steering, cfg)
            if stop is not None:
                break
        progress.update(len(batch.labels))
    progress.close()
    return Epoch(step.meter.mean(), progress.throughput, stop)


def thaw(p: Parts, state: TrainState, cfg: Config) -> None:
    """``--unfreeze-at=E``: what ``--freeze`` froze trains from epoch E on (1-based). A function of the epoch
    alone, called before each epoch, so a run resumed on either side of E is frozen exactly as it was."""
    freeze, at = freeze_of(cfg.model), cfg.model.unfreeze_at
    if freeze == "none" or not at:
        return
    changed = set_frozen(unwrap(p.step.model), freeze, state.epoch + 1 < at)
    if changed:
        p.step.params = [x for x in p.step.model.parameters() if x.requires_grad]
    if changed and state.epoch + 1 >= at:
        log.info(f"epoch {state.epoch + 1}: unfroze {changed} parameter tensors (--unfreeze-at={at}); the "
                 f"backbone trains at lr x {cfg.model.backbone_lr_mult:g}")
        p.run.log(event_record("unfreeze", epoch=state.epoch + 1, step=state.global_step, parameters=changed))


def after_step(p: Parts, state: TrainState, commands: list[Command], steering: Steering, cfg: Config) -> Stop | None:
    """Apply the commands due after this optimizer step, in order, answering each that came from ``dogcat ctl``.
    A Stop also writes ``last.pt``; it is returned and the epoch ends there. Every rank applies the same
    commands (saving and validating are collective)."""
    stop, saved = None, False
    for command in commands:
        result = answered(command, p, state, cfg) if command.reply else {"ok": True, **apply(command, p, state, cfg)}
        steering.answer(command, result, state)
        saved = saved or (isinstance(command, Save) and result["ok"])
        stop = stop or (command if isinstance(command, Stop) else None)
    if stop is not None and not saved:
        write_checkpoint(cfg, p, state)
    return stop


def answered(command: Command, p: Parts, state: TrainState, cfg: Config) -> dict[str, Any]:
    """A ``dogcat ctl`` command's effect, or why it failed: it is answered and the training goes on. (The
    commands of the run's own making, a due save or a stop's checkpoint, fail the run as any error does.)"""
    try:
        return {"ok": True, **apply(command, p, state, cfg)}
    except (ConfigError, ValueError) as e:
        return {"ok": False, "message": str(e)}
    except Exception as e:  # noqa: BLE001
        log.warning(f"ctl {command}: failed: {type(e).__name__}: {e}")
        return {"ok": False, "message": f"failed: {type(e).__name__}: {e}"}


def apply(command: Command, p: Parts, state: TrainState, cfg: Config) -> dict[str, Any]:
    """One command's effect; returns the answer's fields (a ``message`` at least)."""
    main = p.runtime.dist.main
    if isinstance(command, Set):
        key, old, new = set_live(cfg, p.step, command.key, command.value)
        if main:  # the run's record says where it was steered
            atomic_write_text(p.run.folder.config, to_yaml(cfg))
        return {"message": f"{key}: {old} -> {new}", "key": key, "old": old, "new": new}
    if isinstance(command, Save):
        write_checkpoint(cfg, p, state)
        return {"message": f"saved {p.checkpoints.last} at step {state.global_step}"}
    if isinstance(command, Eval):
        m = validate_now(p, cfg)
        return {"message": f"val {summary(m)}", "metrics": {k: v for k, v in m.items() if k != "confusion"}}
    if isinstance(command, Stop):
        return {"message": "stopping: checkpoint now, status 'stopped'; continue with --resume"}
    if isinstance(command, Debug):
        return {"message": debug_step(p.step, cfg, p.run.path / "debug" / f"step-{state.global_step:07d}", main,
                                       top=p.run.path)}
    raise ValueError(command.reason if isinstance(command, Invalid) else f"not a command: {command!r}")


def usable(batch: Batch, batch_size: int | None) -> bool:
    """Not all files bad, and not a lone leftover image (BatchNorm cannot train on one) unless batches are 1."""
    n = len(batch.labels)
    return n > 1 or n == 1 == batch_size


def _log_window(p: Parts, state: TrainState, progress: Progress) -> None:
    """The training loss since the last log step, to metrics.jsonl (and TensorBoard) and the progress display."""
    window_loss, lr = p.step.meter.window(), p.step.optimizer.param_groups[0]["lr"]
    p.run.log(step_record(state.global_step, state.epoch + 1, window_loss, lr, progress.throughput))
    progress.note(loss=window_loss, lr=lr)


def validate_now(p: Parts, cfg: Config) -> dict[str, Any]:
    """A validation pass in the middle of training (``dogcat ctl RUN eval``)."""
    if p.val_loader is None:
        raise ValueError("this run has no validation set")
    pre = p.data.pre
    return validate(p.step.eval_model, p.val_loader, p.runtime, len(pre.classes), p.bad, p.progress,
                    cfg.train.print_freq, meter=eval_meter(list(pre.classes), pre.multilabel))


@torch.no_grad()
def validate(model: nn.Module, loader: Any, rt: Runtime, num_classes: int, bad: BadFiles | None = None,
             progress: str = "none", print_freq: int = 20, collect: Collector | None = None,
             meter: EvalMeter | MultiLabelMeter | None = None) -> dict[str, Any]:
    """Every metric of the metrics table and the confusion matrix over a whole loader, in eval mode;
    ``collect`` also keeps per-sample probabilities and the worst mistakes (tracking/collect.py). Under DDP each
    rank evaluates its shard with the plain module (no DDP collectives per forward) and the sums are reduced.
    ``meter``: what to accumulate (default: a multi-class ``EvalMeter``; a multi-label model's: ``eval_meter``)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    meter = meter if meter is not None else EvalMeter(num_classes)
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
    train_mode(model, was_training)
    if rt.dist.enabled:
        meter.reduce(rt.dist)
    return meter.compute()
