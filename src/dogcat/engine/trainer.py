"""``train(cfg)``: set up, then ``train_one_epoch`` and ``validate`` (loop.py) once per epoch, checkpoint, repeat.

A run can stop at any optimizer-step boundary (signal, ``--max-steps``) and resume exactly: the
checkpoint holds the position inside the epoch, the loss sums so far and every RNG's state, and the
training order and augmentations are functions of (seed, epoch, position) (see ``ResumableSampler``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, as_config, from_dict, to_dict, to_yaml
from ..control import StopFlag, TrainingStopped
from ..data import (BadFiles, DataBundle, ResumableSampler, SeededItems, ShardSampler, build_train_val,
                    make_loader, write_splits)
from ..io import atomic_write_text, one_line
from ..models import build_model, check_input
from ..models.weights import load_weights
from ..tracking.run import Run, find_run
from ..tracking.tracker import Tracker
from . import distributed
from .checkpoint import CheckpointError, Checkpoints
from .distributed import Dist, unwrap
from .loop import Loop, LossMeter, train_one_epoch, validate
from .metrics import format_confusion
from .optim import Schedule, build_optimizer, check_optimizer
from .recipes import build_criterion, build_ema, choose_precision
from .resume import resume_changes, rng_state, set_rng_state
from .steering import Steering
from .runtime import grad_scaler, memory_format, pick_device, seed_everything

log = logging.getLogger("dogcat")


@dataclass
class Result:
    """What a training returns; ``stopped`` when it ended early (``--max-steps``) and can be resumed."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped: bool = False


def better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor.endswith("accuracy") else value < best


def train(cfg: Config | str | Path | dict | None = None, /, **overrides: Any) -> Result:
    """Train as ``cfg`` says (a :class:`Config`, a YAML recipe's path, a dict of options or None for the
    defaults) with keyword ``overrides`` on top: ``train(model="resnet18", train_data_root="data/train")``.
    ``resume=RUN`` continues a run in its own folder where it stopped, from its own recorded config."""
    if cfg is None and overrides.get("resume"):
        cfg = find_run(str(overrides["resume"]), str(overrides.get("runs_root", "runs"))) / "config.yaml"
    cfg = as_config(cfg, overrides)
    d, device = distributed.setup(pick_device(cfg.train))
    try:
        return _train(cfg, d, device)
    finally:
        distributed.shutdown(d)


def _train(cfg: Config, d: Dist, device: torch.device) -> Result:
    ckpt, data = None, None
    check_optimizer(cfg.optim.optimizer)  # a bad name fails here, before a run folder
    if cfg.train.resume:
        run = Run(find_run(cfg.train.resume, cfg.train.runs_root), writer=d.main).lock()  # one writer per run
    else:  # bad data (a wrong path, an empty list) or a size the model cannot take fail here, before a run folder
        data = build_train_val(cfg.data, processes=d.world)
        check_input(cfg.model.model, data.in_chans, cfg.data.image_size)
        created = Run.create(cfg) if d.main else None  # one run folder, made by rank 0, named to all
        run = created or Run(Path(distributed.broadcast(None, d)), writer=False)
        if created is not None:
            distributed.broadcast(str(created.path), d)
    try:
        changes: dict = {}
        if cfg.train.resume:
            ckpts = Checkpoints(run.ckpt_dir)
            if d.main:
                ckpts.clean_temps()  # ours to clean: the lock says no other process is writing here
            ckpt, _ = ckpts.load_latest()
            changes = resume_changes(ckpt["config"], cfg)
            if cfg.train.max_steps and ckpt["global_step"] >= cfg.train.max_steps:
                log.info(f"--max-steps={cfg.train.max_steps} was reached before this resume; training on to max_epoch")
                cfg.train.max_steps = None
            if d.main:
                atomic_write_text(run.path / "config.yaml", to_yaml(cfg))
        return _run(cfg, run, ckpt, changes, d, device, data)
    finally:
        run.unlock()


def _run(cfg: Config, run: Run, ckpt: dict | None, changes: dict, d: Dist, device: torch.device,
         data: DataBundle | None) -> Result:
    """Train in the (locked) run folder, keeping its status and manifest up to date."""
    if d.main:  # manifest.json, TensorBoard
        run.tracker = Tracker.start(run, cfg, ckpt["global_step"] if ckpt else None)
    run.set_status("running")
    try:
        with StopFlag() as stop:
            result = _fit(cfg, run, ckpt, stop, changes, d, device, data)
    except (KeyboardInterrupt, TrainingStopped) as e:
        _final_status(run, "stopped", e)
        raise
    except BaseException as e:
        _final_status(run, "failed", e)
        raise
    run.set_status("stopped" if result.stopped else "finished")
    return result


def _final_status(run: Run, status: str, error: BaseException) -> None:
    """Record how the run ended; a failure to write that (the disk that ended it is still full) must not hide
    the error that ended the run, so it is only a warning."""
    try:
        run.set_status(status, error)
    except Exception as e:  # noqa: BLE001
        log.warning(f"could not record status {status!r} in {run.path}: {one_line(e)}")


@dataclass
class Parts:
    """Everything a run trains with, built from the config."""

    data: DataBundle
    sampler: ResumableSampler
    train_loader: Any
    val_loader: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    scaler: torch.amp.GradScaler
    loop: Loop


def build_parts(cfg: Config, run: Run, resuming: bool, d: Dist | None = None,
                device: torch.device | None = None, data: DataBundle | None = None) -> Parts:
    """Seed, build data, loaders, model (DDP-wrapped under torchrun), optimizer, schedule, loss scaler."""
    d = d or Dist()
    device = device or pick_device(cfg.train)
    seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)  # per-rank dropout; DDP syncs the init
    data = data or build_train_val(cfg.data, processes=d.world)
    if d.main:
        write_splits(data, run.path)
    loader_args = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                       pin_memory=device.type == "cuda")
    sampler = ResumableSampler(len(data.train), cfg.train.seed, rank=d.rank, world=d.world)
    train_loader = make_loader(SeededItems(data.train), shuffle=False, sampler=sampler, **loader_args)
    val_loader = None
    if data.val is not None:  # under DDP each rank validates its own share: every image exactly once
        shard = ShardSampler(len(data.val), d.rank, d.world) if d.enabled else None
        val_loader = make_loader(data.val, shuffle=False, sampler=shard, **loader_args)

    model = build_model(cfg.model.model, len(data.class_names), data.in_chans, cfg.model.pretrained)
    if cfg.model.load_model_path and not resuming:  # a resumed run has its own weights
        load_weights(model, cfg.model.load_model_path, strict=not cfg.model.load_not_strict)
    model.to(device, memory_format=memory_format(cfg.train.channels_last))
    precision = _precision(cfg, model, data, run, d, device)
    ema = build_ema(model, cfg.optim.ema_decay)
    if cfg.train.compile:
        model.compile()  # in place: state_dict keys stay plain
    optimizer = build_optimizer(model, cfg)
    global_batch = cfg.data.batch_size * d.world * cfg.optim.accum_steps
    ratio = global_batch / cfg.train.base_batch_size
    lr_factor = {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[cfg.train.lr_scaling]
    for g in optimizer.param_groups:  # before the schedule reads its base learning rates
        g["lr_mult"] *= lr_factor  # lr of the group = cfg lr x lr_mult (what `ctl set lr` keeps)
        g["lr"] *= lr_factor
    model = distributed.wrap(model, d, device, cfg.train.sync_bn)
    run.log({"kind": "event", "event": "setup", "world_size": d.world, "global_batch": global_batch,
             "lr_scaling": cfg.train.lr_scaling, "lr": cfg.optim.lr * lr_factor})
    batches = math.ceil(sampler.per_rank / cfg.data.batch_size)
    scheduler = Schedule(optimizer, cfg.optim, math.ceil(batches / cfg.optim.accum_steps), cfg.train.max_epoch)
    t = cfg.train
    loop = Loop(device=device, precision=precision, channels_last=t.channels_last, dist=d,
                bad=BadFiles(run.path / "bad_files.txt" if d.main else None), accum_steps=cfg.optim.accum_steps,
                clip_grad_norm=cfg.optim.clip_grad_norm, print_freq=t.print_freq,
                progress=t.progress if d.main else "none",
                debug_file=t.debug_file or str(run.path / "control" / "debug"), run=run, max_epoch=t.max_epoch, batches_per_epoch=batches,
                save_every_steps=t.save_every_steps, max_steps=t.max_steps, meter=LossMeter(device, d),
                nonfinite=t.nonfinite, nonfinite_max_skips=t.nonfinite_max_skips,
                batch_transform=data.batch_transform, criterion=build_criterion(cfg, len(data.class_names)), ema=ema)
    return Parts(data, sampler, train_loader, val_loader, model, optimizer, scheduler,
                 grad_scaler(device, precision), loop)


def _precision(cfg: Config, model: nn.Module, data: DataBundle, run: Run, d: Dist, device: torch.device) -> str:
    """``--precision``, with ``auto`` resolved by a timed probe (rank 0's choice holds for all ranks)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    size, t = cfg.data.image_size, cfg.train
    choice, info = choose_precision(model, device, (data.in_chans, size, size), cfg.data.batch_size,
                                    t.channels_last, cfg.model.model, len(data.class_names))
    choice = distributed.broadcast(choice, d)
    timed = ", ".join(f"{k} {v * 1000:.0f} ms/step" for k, v in info["seconds"].items()) or info.get("reason", "")
    log.info(f"--precision=auto chose {choice} ({timed}{', cached' if info['cached'] else ''})")
    run.log({"kind": "event", "event": "precision", "chosen": choice, **info})
    return choice


def checkpoint_state(cfg: Config, p: Parts) -> dict[str, Any]:
    """The full training state at the loop's position: tensors and plain data only (weights_only loads).
    Collective under DDP (every rank's RNG and loss sums are gathered), so every rank calls it."""
    assert p.loop.meter is not None
    d = p.loop.dist
    return {"model": unwrap(p.model).state_dict(), "ema": p.loop.ema.module.state_dict() if p.loop.ema else None,
            "precision": p.loop.precision, "device_type": p.loop.device.type, "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "scaler": p.scaler.state_dict(),
            "epoch": p.loop.epoch, "batch_in_epoch": p.loop.batch, "global_step": p.loop.global_step,
            "world_size": d.world, "loss_meter": distributed.gather(p.loop.meter.state_dict(), d),
            "rng": distributed.gather(rng_state(), d),
            "best_metric": p.loop.best, "best_epoch": p.loop.best_epoch, "monitor": cfg.train.monitor,
            "config": to_dict(cfg), "class_names": p.data.class_names, "in_chans": p.data.in_chans,
            "mean": list(p.data.mean), "std": list(p.data.std), "data_kind": p.data.kind}


def restore(p: Parts, ckpt: dict[str, Any], cfg: Config, run: Run, changes: dict) -> None:
    """Put a resumed run back exactly where its checkpoint left it (RNG last: setup consumed some). A
    checkpoint whose parts do not fit this run (damaged, or of another model) is one CheckpointError line."""
    try:
        _restore(p, ckpt, cfg)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot resume {run.path} from its checkpoint: {type(e).__name__}: "
                              f"{one_line(e, 300)}") from e
    log_resume(p, ckpt, run, changes)


def _restore(p: Parts, ckpt: dict[str, Any], cfg: Config) -> None:
    assert p.loop.meter is not None
    unwrap(p.model).load_state_dict(ckpt["model"])
    if p.loop.ema is not None:  # EMA switched on at this resume: it starts from the current weights
        p.loop.ema.module.load_state_dict(ckpt.get("ema") or ckpt["model"])
    mults = [g["lr_mult"] for g in p.optimizer.param_groups]  # this run's: the checkpoint may predate them
    p.optimizer.load_state_dict(ckpt["optimizer"])
    for g, m in zip(p.optimizer.param_groups, mults):
        g["lr_mult"] = m
    p.scheduler.load_state_dict(ckpt["scheduler"])
    p.scaler.load_state_dict(ckpt["scaler"])
    old = from_dict(ckpt["config"], "the checkpoint's config")
    if cfg.optim.lr != old.optim.lr:  # a changed lr is set as the new base, keeping the schedule's shape
        p.scheduler.set_base_lr(cfg.optim.lr)
    for g in p.optimizer.param_groups:
        if "weight_decay" in g:
            g["weight_decay"] = cfg.optim.weight_decay
    p.loop.epoch, p.loop.batch, p.loop.global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
    p.loop.best, p.loop.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
    d, old_world = p.loop.dist, ckpt.get("world_size", 1)
    meters, rngs = ckpt["loss_meter"], ckpt["rng"]
    if old_world == d.world:  # each rank back exactly where it was
        p.loop.meter.load_state_dict(meters[d.rank])
        set_rng_state(rngs[d.rank])
    else:  # another world size: same samples seen in all, approximately; exactness is not promised
        p.loop.batch = ckpt["batch_in_epoch"] * old_world // d.world
        if d.main:
            p.loop.meter.load_state_dict({k: sum(m[k] for m in meters) for k in meters[0]})
        set_rng_state(rngs[d.rank % old_world])
        log.warning(f"resuming a {old_world}-process run with {d.world}: continuing at batch {p.loop.batch} of "
                    "the epoch; the result is not bit-identical to an uninterrupted run")


def log_resume(p: Parts, ckpt: dict[str, Any], run: Run, changes: dict) -> None:
    """Drop what a killed session logged after the checkpoint, and record the resume."""
    dropped = run.rewind_log(ckpt["global_step"], ckpt["epoch"])
    run.log({"kind": "event", "event": "resume", "epoch": ckpt["epoch"], "batch_in_epoch": ckpt["batch_in_epoch"],
             "step": ckpt["global_step"], "changed": changes, "dropped_log_records": dropped})
    log.info(f"resuming {run.path} at epoch {ckpt['epoch'] + 1}, batch {ckpt['batch_in_epoch']} "
             f"(step {ckpt['global_step']})" + (f"; changed: {changes}" if changes else ""))


def _fit(cfg: Config, run: Run, ckpt: dict | None, stop: StopFlag, changes: dict, d: Dist,
         device: torch.device, data: DataBundle | None = None) -> Result:
    p = build_parts(cfg, run, ckpt is not None, d, device, data)
    ckpts = Checkpoints(run.ckpt_dir, cfg.train.monitor, cfg.train.keep_top_k, cfg.train.save_every_epochs)
    if ckpt is not None:
        restore(p, ckpt, cfg, run, changes)
    if run.tracker is not None:  # data fingerprint; TensorBoard, purged after the checkpoint's step
        run.tracker.setup(p)
    def save_step() -> None:  # every rank gathers, rank 0 writes
        state = checkpoint_state(cfg, p)
        if d.main:
            ckpts.save(state)

    p.loop.stop, p.loop.save_step = stop, save_step
    steering = Steering(cfg, p, run, p.loop.save_step, lambda: _validate_now(p))
    p.loop.steer, p.loop.debug = steering, steering.debug
    try:
        return _epochs(cfg, run, p, ckpts, stop)
    finally:
        if steering.inbox is not None:
            steering.inbox.close()  # `dogcat ctl` now says: no process running


def _epochs(cfg: Config, run: Run, p: Parts, ckpts: Checkpoints, stop: StopFlag) -> Result:
    """The epoch loop: train, validate, log, checkpoint; leaves early when asked to stop."""
    log.info(f"run folder: {run.path}")
    log.info(f"{cfg.model.model}: {sum(x.numel() for x in p.model.parameters()):,} parameters on "
             f"{p.loop.device}, {len(p.data.train)} training / {len(p.data.val) if p.data.val else 0} "
             f"validation images, classes {p.data.class_names}")
    history = []
    while p.loop.epoch < cfg.train.max_epoch:
        epoch, t0 = p.loop.epoch, time.perf_counter()
        p.sampler.set_epoch(epoch, start=p.loop.batch * cfg.data.batch_size)
        train_stats = train_one_epoch(p.model, p.train_loader, p.optimizer, p.scheduler, p.scaler, p.loop)
        if p.loop.stopping:  # last.pt was written at the step boundary
            if stop.signum is not None:
                raise TrainingStopped(stop.signum, str(ckpts.last))
            why = "dogcat ctl stop" if p.loop.stop_requested else "--max-steps"
            log.info(f"stopped after step {p.loop.global_step} ({why}); resume with --resume={run.path}")
            return Result(run.path, p.loop.best, p.loop.best_epoch, history, stopped=True)
        collect = run.tracker.collector() if run.tracker is not None else None  # mistakes, PR curve
        val_stats = validate(_eval_model(p), p.val_loader, p.loop, len(p.data.class_names), collect) if p.val_loader else {}
        p.scheduler.epoch_end(train_stats["loss"])

        record = {"kind": "epoch", "epoch": epoch + 1, "step": p.loop.global_step,
                  "train_loss": train_stats["loss"], "train_images_per_s": train_stats["images_per_s"],
                  "lr": p.optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0,
                  **{f"val_{k}": v for k, v in val_stats.items() if k != "confusion"}}
        run.log(record)
        if run.tracker is not None:
            run.tracker.epoch_end(p.loop.global_step, val_stats, collect)
        history.append(record)
        _print_epoch(record, val_stats, p.data.class_names, cfg.train.max_epoch)

        # without a validation set, judge by the training loss
        metric = record.get(cfg.train.monitor, -record["train_loss"] if cfg.train.monitor.endswith("accuracy")
                            else record["train_loss"])
        is_best = better(metric, p.loop.best, cfg.train.monitor)
        if is_best:
            p.loop.best, p.loop.best_epoch = metric, epoch + 1
        p.loop.epoch, p.loop.batch = epoch + 1, 0
        p.loop.meter.reset()  # type: ignore[union-attr]
        state = checkpoint_state(cfg, p)
        if p.loop.dist.main:
            ckpts.save(state, epoch_end=True, is_best=is_best, metric=record.get(cfg.train.monitor))
    for files in distributed.gather(p.loop.bad.files, p.loop.dist)[1:]:  # other ranks' bad files, to rank 0
        p.loop.bad.add(list(files.items()))
    if p.loop.bad.count:
        log.warning(f"{p.loop.bad.count} unreadable image(s) were skipped; list in {run.path / 'bad_files.txt'}")
    best = p.loop.best if p.loop.best is not None else float("nan")
    log.info(f"best {cfg.train.monitor} {best:.4f} at epoch {p.loop.best_epoch}; checkpoints in {run.ckpt_dir}")
    return Result(run.path, p.loop.best, p.loop.best_epoch, history)


def _validate_now(p: Parts) -> dict[str, Any]:
    if p.val_loader is None:
        raise ValueError("this run has no validation set")
    return validate(_eval_model(p), p.val_loader, p.loop, len(p.data.class_names))


def _eval_model(p: Parts) -> nn.Module:
    """The weights that are validated (and that val/test/predict load): the EMA's when there is one."""
    return p.loop.ema.module if p.loop.ema is not None else p.model


def _print_epoch(record: dict, val: dict, class_names: list[str], max_epoch: int) -> None:
    msg = f"epoch {record['epoch']}/{max_epoch}: train loss {record['train_loss']:.4f}"
    if val:
        msg += (f", val loss {val['loss']:.4f}, val accuracy {val['accuracy']:.4f}, "
                f"val logloss {val['logloss']:.4f}")
    log.info(f"{msg}, lr {record['lr']:.3g}, {record['epoch_seconds']:.1f}s")
    if val:
        log.info(format_confusion(val["confusion"], class_names))
