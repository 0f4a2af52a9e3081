"""``train(cfg)``: open the run folder (opening.py), build the parts, then each epoch ``train_one_epoch`` and
``validate`` (loop.py), log, checkpoint; repeat.

A run can stop at any optimizer-step boundary (signal, ``dogcat ctl stop``, ``--max-steps``) and resume
exactly: the checkpoint holds the :class:`TrainState` (the position inside the epoch), the loss sums so far and
every RNG's state, and the training order and augmentations are functions of (seed, epoch, position) (see
``ResumableSampler``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, as_config
from ..control import StopFlag, TrainingStopped
from ..data import DataBundle
from ..io import one_line
from ..metrics import format_confusion, format_per_label, metric, summary
from ..tracking.progress import EpochTable
from ..tracking.records import epoch_record, event_record
from ..tracking.run import Run, RunFolder, find_run
from ..tracking.tracker import Tracker
from . import distributed
from .commands import Stop
from .distributed import Dist, unwrap
from .features import whole_model
from .given import Given
from .loop import Epoch, thaw, train_one_epoch, validate
from .meters import eval_meter
from .opening import Resume, open_run
from .parts import Parts, build_parts, restore_run, write_checkpoint
from .result import OnEpoch, Result
from .runtime import pick_device
from .state import TrainState
from .steering import Steering

log = logging.getLogger("dogcat")


def train(cfg: Config | str | Path | dict | None = None, /, *, on_epoch: OnEpoch | None = None,
          **overrides: Any) -> Result:
    """Train as ``cfg`` says (a :class:`Config`, a YAML recipe's path, a dict of options or None for the
    defaults) with keyword ``overrides`` on top: ``train(model="resnet18", train_data_root="data/train")``.
    ``resume=RUN`` continues a run in its own folder where it stopped, from its own recorded config.
    ``on_epoch(record)`` may end the run after any epoch by returning a reason (see :data:`OnEpoch`).

    Python objects need no registering (engine/given.py): ``model=`` an ``nn.Module``, ``train_data=`` /
    ``val_data=`` a torch Dataset of ``(image, label)`` or a pandas DataFrame of paths and labels (columns
    ``path_column=`` / ``label_column=``, default path / label), ``classes=`` the class names."""
    given = Given.take(overrides)
    own = cfg is None and bool(overrides.get("resume"))  # the run's own config.yaml: its places are the run's
    if own:
        cfg = RunFolder(find_run(str(overrides["resume"]), str(overrides.get("runs_root", "runs")))).config
    cfg = as_config(cfg, overrides, run_config=own)
    d, device = distributed.setup(pick_device(cfg.train))
    try:
        run, resume, data = open_run(cfg, d, given)
        try:
            result = _tracked(cfg, run, data, d, device, resume, on_epoch, given.module)
            result.module = given.module
            return result
        finally:
            run.unlock()
    finally:
        distributed.shutdown(d)


def _tracked(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device,
             resume: Resume | None, on_epoch: OnEpoch | None = None, module: nn.Module | None = None) -> Result:
    """Train in the (locked) run folder, keeping its status and manifest up to date."""
    tracker = Tracker.start(run.folder, cfg, d, resume.ckpt["state"]["global_step"] if resume else None)  # rank 0's
    if tracker is not None:  # manifest.json, TensorBoard: every record and the final status reach it via the run
        run.sinks.append(tracker)
    run.set_status("running")
    try:
        with StopFlag() as signals:
            result = fit(cfg, run, data, d, device, signals, resume, on_epoch, tracker, module)
    except (KeyboardInterrupt, TrainingStopped) as e:
        _final_status(run, "stopped", e)
        raise
    except BaseException as e:
        _final_status(run, "failed", e)
        raise
    run.set_status("pruned" if result.pruned else "stopped" if result.stopped else "finished")
    return result


def _final_status(run: Run, status: str, error: BaseException) -> None:
    """Record how the run ended; failing to (the full disk that ended it) only warns: the run's error shows."""
    try:
        run.set_status(status, error)
    except Exception as e:  # noqa: BLE001
        log.warning(f"could not record status {status!r} in {run.path}: {one_line(e)}")


def fit(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device, signals: StopFlag,
        resume: Resume | None = None, on_epoch: OnEpoch | None = None, tracker: Tracker | None = None,
        module: nn.Module | None = None) -> Result:
    """Build the parts (around ``module``, a user's own, when given), put a resumed run back where it was, and
    run the epochs."""
    p = build_parts(cfg, run, data, d, device, resuming=resume is not None, module=module)
    p.tracker = tracker
    state = TrainState(world=d.world)
    if resume is not None:
        restore_run(p, state, *resume)
    if tracker is not None:  # data fingerprint; TensorBoard, purged after the checkpoint's step
        tracker.setup(p.data, str(device))
        tracker.model_graph(whole_model(unwrap(p.step.model)), device)
    debug_file = cfg.train.debug_file or str(run.folder.debug_trigger)
    steering = Steering(cfg, run.folder.control, d, device, signals, debug_file, run.log)
    try:
        return run_epochs(cfg, p, state, steering, on_epoch)
    finally:
        steering.close()


def run_epochs(cfg: Config, p: Parts, state: TrainState, steering: Steering, on_epoch: OnEpoch | None = None
               ) -> Result:
    """The epoch loop: train, validate, log, checkpoint; leaves early when asked to stop."""
    run, monitor, names = p.run, cfg.train.monitor, list(p.data.pre.classes)
    log.info(f"run folder: {run.path}")
    log.info(f"{cfg.model.model}: {sum(x.numel() for x in p.step.model.parameters()):,} parameters on "
             f"{p.runtime.device}, {len(p.data.train)} training / {len(p.data.val) if p.data.val else 0} "
             f"validation images, classes {names}")
    history, early = [], None
    table = EpochTable(show=None if p.runtime.dist.main else False)  # a notebook's live HTML table of the epochs
    while state.epoch < cfg.train.max_epoch:
        if state.patience_out(cfg.train.patience):  # read each epoch: `dogcat ctl set patience=N` counts
            early = _early_stop(cfg, state, run)
            break
        t0 = time.perf_counter()
        p.sampler.set_epoch(state.epoch, start=state.batch * cfg.data.batch_size)
        thaw(p, state, cfg)  # --unfreeze-at: frozen or not, as a function of the epoch
        epoch = train_one_epoch(p, state, steering, cfg)
        if epoch.stop is not None:  # last.pt was written at the step boundary
            return _stopped(p, state, epoch.stop, steering, history)
        record = _validate_and_log(cfg, p, state, epoch, t0)
        history.append(record)
        table.add(record)

        value = record.get(monitor)
        if value is None:  # no validation set: judge by the training loss, in the monitor's direction
            value = -record["train_loss"] if metric(monitor).higher_is_better else record["train_loss"]
        is_best = state.observe(monitor, value, cfg.train.min_delta)
        state.next_epoch()
        p.step.meter.reset()
        write_checkpoint(cfg, p, state, epoch_end=True, is_best=is_best, metric=record.get(monitor))
        if on_epoch is not None and (reason := _epoch_verdict(on_epoch, record, p)):
            return _pruned(p, state, reason, history)
    _report_bad_files(p)
    _log_best(cfg, p, state)
    return Result(run.path, state.best, state.best_epoch, history, early_stop=early)


def _validate_and_log(cfg: Config, p: Parts, state: TrainState, trained: Epoch, t0: float) -> dict[str, Any]:
    """The end of an epoch's training: validate, step the epoch scheduler, log the epoch record (metrics.jsonl,
    trackers, the console) and, when due, the projector's embeddings. Returns the record."""
    run, pre, tracker = p.run, p.data.pre, p.tracker
    names = list(pre.classes)
    collect = tracker.collector() if tracker is not None and not pre.multilabel else None  # mistakes, PR curve
    if collect is not None and p.features:
        collect.keep_images = 0  # the validation batches are features, not pictures to show
    val = validate(p.step.eval_model, p.val_loader, p.runtime, len(names), p.bad, p.progress,
                   cfg.train.print_freq, collect, eval_meter(names, pre.multilabel)) if p.val_loader else {}
    if pre.multilabel and val:  # this epoch's checkpoints carry the thresholds chosen on its validation
        p.data.pre = dataclasses.replace(pre, thresholds=tuple(val["thresholds"]))
    p.step.scheduler.epoch_end(trained.loss)
    record = epoch_record(state.epoch + 1, state.global_step, trained.loss, trained.images_per_s,
                          p.step.optimizer.param_groups[0]["lr"], time.perf_counter() - t0, val)
    run.log(record)
    if tracker is not None:
        tracker.epoch_end(state.global_step, val, collect)
    _print_epoch(record, val, names, cfg.train.max_epoch)
    every, epoch = cfg.train.embeddings_every, state.epoch + 1
    if tracker is not None and not pre.multilabel and (epoch == cfg.train.max_epoch or (every and epoch % every == 0)):
        tracker.embeddings(state.global_step, whole_model(unwrap(p.step.eval_model)), p.data.val, p.runtime.device,
                           cfg.data.batch_size)
    return record


def _log_best(cfg: Config, p: Parts, state: TrainState) -> None:
    monitor, where = cfg.train.monitor, p.run.ckpt_dir
    best = state.best if state.best is not None else float("nan")
    if p.val_loader is None:  # state.best holds the training loss, negated for a higher-is-better monitor
        loss = -best if metric(monitor).higher_is_better else best
        log.info(f"no validation set: best.pt is the epoch of the lowest training loss, {loss:.4f} at epoch "
                 f"{state.best_epoch}; checkpoints in {where}")
    else:
        log.info(f"best {monitor} {best:.4f} at epoch {state.best_epoch}; checkpoints in {where}")


def _early_stop(cfg: Config, state: TrainState, run: Run) -> str:
    """Log why early stopping ends the run (to the log and metrics.jsonl, where ``dogcat runs`` finds it)."""
    t = cfg.train
    best = f"{state.best:.4f}" if state.best is not None else "none"
    reason = (f"early stop after epoch {state.epoch}: {t.monitor} did not improve by more than {t.min_delta:g} "
              f"in {state.plateau_epochs} epochs (--patience={t.patience}); best {best} at epoch {state.best_epoch}")
    log.info(reason)
    run.log(event_record("early_stop", epoch=state.epoch, step=state.global_step, reason=reason))
    return reason


def _stopped(p: Parts, state: TrainState, stop: Stop, steering: Steering, history: list[dict]) -> Result:
    signals = steering.signals
    if signals is not None and signals.signum is not None:  # exit 128 + N, as a shell expects of a signal
        raise TrainingStopped(signals.signum, str(p.checkpoints.last))
    why = {"ctl": "dogcat ctl stop", "max_steps": "--max-steps"}.get(stop.why, "a signal to another process")
    log.info(f"stopped after step {state.global_step} ({why}); resume with --resume={p.run.path}")
    return Result(p.run.path, state.best, state.best_epoch, history, stopped=True)


def _epoch_verdict(on_epoch: OnEpoch, record: dict[str, Any], p: Parts) -> str | None:
    """Rank 0 asks ``on_epoch``; every rank gets its answer, so all stop at the same epoch."""
    d = p.runtime.dist
    return distributed.broadcast(on_epoch(record) if d.main else None, d)


def _pruned(p: Parts, state: TrainState, reason: str, history: list[dict]) -> Result:
    _report_bad_files(p)
    p.run.log(event_record("pruned", epoch=state.epoch, step=state.global_step, reason=reason))
    log.info(f"pruned after epoch {state.epoch}: {reason}")
    return Result(p.run.path, state.best, state.best_epoch, history, pruned=reason)


def _report_bad_files(p: Parts) -> None:
    for files in distributed.gather(p.bad.files, p.runtime.dist)[1:]:  # other ranks' bad files, to rank 0
        p.bad.add(list(files.items()))
    if p.bad.count:
        log.warning(f"{p.bad.count} unreadable image(s) were skipped; list in {p.run.folder.bad_files}")


def _print_epoch(record: dict, val: dict, class_names: list[str], max_epoch: int) -> None:
    msg = f"epoch {record['epoch']}/{max_epoch}: train loss {record['train_loss']:.4f}"
    if val:
        msg += ", " + summary(val, "val ")
    log.info(f"{msg}, lr {record['lr']:.3g}, {record['epoch_seconds']:.1f}s")
    if "confusion" in val:
        log.info(format_confusion(val["confusion"], class_names))
    if "per_label" in val:
        log.info(format_per_label(val["per_label"]))
