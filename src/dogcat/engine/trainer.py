"""``train(cfg)``: set up, then ``train_one_epoch`` and ``validate`` once per epoch, checkpoint, repeat.

A run can stop at any optimizer-step boundary (signal, ``--max-steps``) and resume exactly: the
checkpoint holds the position inside the epoch, the loss sums so far and every RNG's state, and the
training order and augmentations are functions of (seed, epoch, position) (see ``ResumableSampler``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, dump_yaml, from_dict, to_dict
from ..control import StopFlag, TrainingStopped
from ..data import (BadFiles, DataBundle, ResumableSampler, SeededItems, ShardSampler, build_train_val,
                    detect_kind, make_loader, write_splits)
from ..models import build_model
from ..models.weights import load_weights
from ..tracking.progress import Progress
from ..tracking.run import Run, find_run
from ..tracking.tracker import Collector, Tracker
from . import distributed
from .checkpoint import Checkpoints
from .distributed import Dist, unwrap
from .metrics import EvalMeter, format_confusion
from .optim import Schedule, build_optimizer
from .resume import resume_changes, rng_state, set_rng_state
from .steering import Steering, check_finite, rescale_lr
from .runtime import autocast, grad_scaler, memory_format, pick_device, seed_everything

log = logging.getLogger("dogcat")


@dataclass
class Result:
    """What a training returns; ``stopped`` when it ended early (``--max-steps``) and can be resumed."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped: bool = False


class LossMeter:
    """Loss sums of the epoch and of the logging window, kept on the device (a ``.item()`` per step would
    sync a GPU) and checkpointed mid-epoch so a resumed epoch reports the same mean."""

    def __init__(self, device: torch.device, d: Dist | None = None) -> None:
        self.device, self.dist = device, d or Dist()
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device)
        self.sum, self.n, self.win_sum, self.win_n = z, 0, z.clone(), 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.sum = self.sum + loss.detach().float() * n
        self.win_sum = self.win_sum + loss.detach().float() * n
        self.n, self.win_n = self.n + n, self.win_n + n

    def _mean(self, total: torch.Tensor, n: int) -> float:
        if self.dist.enabled:  # every rank's images count: sum (loss x n) and n over the group
            both = distributed.all_reduce_sum(torch.stack([total, torch.tensor(float(n), device=self.device)]),
                                              self.dist)
            return (both[0] / both[1].clamp_min(1)).item()
        return (total / max(1, n)).item()

    def window(self) -> float:
        value = self._mean(self.win_sum, self.win_n)
        self.win_sum, self.win_n = torch.zeros((), device=self.device), 0
        return value

    def mean(self) -> float:
        return self._mean(self.sum, self.n)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.cpu(), "n": self.n, "win_sum": self.win_sum.cpu(), "win_n": self.win_n}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.sum, self.win_sum = s["sum"].to(self.device), s["win_sum"].to(self.device)
        self.n, self.win_n = s["n"], s["win_n"]


@dataclass
class Loop:
    """Settings, position and counters shared by ``train_one_epoch`` and ``validate``."""

    device: torch.device
    precision: str
    channels_last: bool
    bad: BadFiles
    dist: Dist = field(default_factory=Dist)
    accum_steps: int = 1
    clip_grad_norm: float | None = None
    print_freq: int = 20
    progress: str = "auto"
    debug_file: str | None = None
    run: Run | None = None
    max_epoch: int = 1
    batches_per_epoch: int = 0
    save_every_steps: int = 0
    max_steps: int | None = None
    epoch: int = 0          # the epoch being trained (0-based)
    batch: int = 0          # batches of this epoch consumed so far
    global_step: int = 0    # optimizer steps so far
    best: float | None = None  # best monitored metric so far, and its epoch
    best_epoch: int = -1
    meter: LossMeter | None = None
    stop: StopFlag | None = None
    save_step: Callable[[], None] | None = None  # writes last.pt at a step boundary
    steer: Callable[[], None] | None = None      # applies `dogcat ctl` commands (engine/steering.py)
    debug: Callable[[], str] | None = None
    stop_requested: bool = False                 # `dogcat ctl RUN stop`
    stopping: bool = False
    last_batch: tuple | None = None              # (images, labels, ids, loss) for `debug`
    batch_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None  # DataBundle.batch_transform
    nonfinite: str = "stop"
    nonfinite_max_skips: int = 5
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True, memory_format=memory_format(self.channels_last))
        return images, labels.to(self.device, non_blocking=True)

    def after_step(self) -> bool:
        """At an optimizer-step boundary: apply ctl commands, checkpoint when due or asked to stop; True: stop."""
        if self.steer is not None:
            self.steer()
        signalled = self.stop is not None and self.stop.signum is not None
        self.stopping = distributed.any_true(  # a signal may reach one rank only: all stop together
            signalled or self.stop_requested or bool(self.max_steps and self.global_step >= self.max_steps),
            self.dist, self.device)
        due = self.save_every_steps and self.global_step % self.save_every_steps == 0
        if (self.stopping or due) and self.save_step is not None:
            self.save_step()
        return self.stopping


def better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor.endswith("accuracy") else value < best


def train(cfg: Config) -> Result:
    """Train as ``cfg`` says; ``cfg.train.resume`` continues a run in its own folder where it stopped."""
    d, device = distributed.setup(pick_device(cfg.train))
    try:
        return _train(cfg, d, device)
    finally:
        distributed.shutdown(d)


def _train(cfg: Config, d: Dist, device: torch.device) -> Result:
    ckpt = None
    if cfg.train.resume:
        run = Run(find_run(cfg.train.resume, cfg.train.runs_root), writer=d.main)
        ckpts = Checkpoints(run.ckpt_dir)
        if d.main:
            ckpts.clean_temps()
        ckpt, _ = ckpts.load_latest()
        changes = resume_changes(ckpt["config"], cfg)
        if cfg.train.max_steps and ckpt["global_step"] >= cfg.train.max_steps:
            log.info(f"--max-steps={cfg.train.max_steps} was reached before this resume; training on to max_epoch")
            cfg.train.max_steps = None
        if d.main:
            dump_yaml(cfg, run.path / "config.yaml")
    else:
        detect_kind(cfg.data)  # a wrong data path fails here, before a run folder is made
        created = Run.create(cfg) if d.main else None  # one run folder, made by rank 0, named to all
        run = created or Run(Path(distributed.broadcast(None, d)), writer=False)
        if created is not None:
            distributed.broadcast(str(created.path), d)
        changes = {}
    if d.main:  # manifest.json, TensorBoard
        run.tracker = Tracker.start(run, cfg, ckpt["global_step"] if ckpt else None)
    run.set_status("running")
    try:
        with StopFlag() as stop:
            result = _fit(cfg, run, ckpt, stop, changes, d, device)
    except (KeyboardInterrupt, TrainingStopped) as e:
        run.set_status("stopped", e)
        raise
    except BaseException as e:
        run.set_status("failed", e)
        raise
    run.set_status("stopped" if result.stopped else "finished")
    return result


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
                device: torch.device | None = None) -> Parts:
    """Seed, build data, loaders, model (DDP-wrapped under torchrun), optimizer, schedule, loss scaler."""
    d = d or Dist()
    device = device or pick_device(cfg.train)
    seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)  # per-rank dropout; DDP syncs the init
    data = build_train_val(cfg.data)
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
    optimizer = build_optimizer(model, cfg)
    global_batch = cfg.data.batch_size * d.world * cfg.optim.accum_steps
    ratio = global_batch / cfg.train.base_batch_size
    lr_factor = {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[cfg.train.lr_scaling]
    for g in optimizer.param_groups:  # before the schedule reads its base learning rates
        g["lr"] *= lr_factor
    model = distributed.wrap(model, d, device, cfg.train.sync_bn)
    run.log({"kind": "event", "event": "setup", "world_size": d.world, "global_batch": global_batch,
             "lr_scaling": cfg.train.lr_scaling, "lr": cfg.optim.lr * lr_factor})
    batches = math.ceil(sampler.per_rank / cfg.data.batch_size)
    scheduler = Schedule(optimizer, cfg.optim, math.ceil(batches / cfg.optim.accum_steps), cfg.train.max_epoch)
    t = cfg.train
    loop = Loop(device=device, precision=t.precision, channels_last=t.channels_last, dist=d,
                bad=BadFiles(run.path / "bad_files.txt" if d.main else None), accum_steps=cfg.optim.accum_steps,
                clip_grad_norm=cfg.optim.clip_grad_norm, print_freq=t.print_freq,
                progress=t.progress if d.main else "none",
                debug_file=t.debug_file, run=run, max_epoch=t.max_epoch, batches_per_epoch=batches,
                save_every_steps=t.save_every_steps, max_steps=t.max_steps, meter=LossMeter(device, d),
                nonfinite=t.nonfinite, nonfinite_max_skips=t.nonfinite_max_skips, batch_transform=data.batch_transform)
    return Parts(data, sampler, train_loader, val_loader, model, optimizer, scheduler,
                 grad_scaler(device, t.precision), loop)


def checkpoint_state(cfg: Config, p: Parts) -> dict[str, Any]:
    """The full training state at the loop's position: tensors and plain data only (weights_only loads).
    Collective under DDP (every rank's RNG and loss sums are gathered), so every rank calls it."""
    assert p.loop.meter is not None
    d = p.loop.dist
    return {"model": unwrap(p.model).state_dict(), "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "scaler": p.scaler.state_dict(),
            "epoch": p.loop.epoch, "batch_in_epoch": p.loop.batch, "global_step": p.loop.global_step,
            "world_size": d.world, "loss_meter": distributed.gather(p.loop.meter.state_dict(), d),
            "rng": distributed.gather(rng_state(), d),
            "best_metric": p.loop.best, "best_epoch": p.loop.best_epoch, "monitor": cfg.train.monitor,
            "config": to_dict(cfg), "class_names": p.data.class_names, "in_chans": p.data.in_chans,
            "mean": list(p.data.mean), "std": list(p.data.std), "data_kind": p.data.kind}


def restore(p: Parts, ckpt: dict[str, Any], cfg: Config, run: Run, changes: dict) -> None:
    """Put a resumed run back exactly where its checkpoint left it (RNG last: setup consumed some)."""
    assert p.loop.meter is not None
    unwrap(p.model).load_state_dict(ckpt["model"])
    p.optimizer.load_state_dict(ckpt["optimizer"])
    p.scheduler.load_state_dict(ckpt["scheduler"])
    p.scaler.load_state_dict(ckpt["scaler"])
    old = from_dict(ckpt["config"])
    if cfg.optim.lr != old.optim.lr:  # a changed lr rescales the schedule, keeping its shape
        rescale_lr(p.optimizer, p.scheduler, cfg.optim.lr / old.optim.lr)
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
    dropped = run.rewind_log(ckpt["global_step"], ckpt["epoch"])
    run.log({"kind": "event", "event": "resume", "epoch": ckpt["epoch"], "batch_in_epoch": ckpt["batch_in_epoch"],
             "step": ckpt["global_step"], "changed": changes, "dropped_log_records": dropped})
    log.info(f"resuming {run.path} at epoch {ckpt['epoch'] + 1}, batch {ckpt['batch_in_epoch']} "
             f"(step {ckpt['global_step']})" + (f"; changed: {changes}" if changes else ""))


def _fit(cfg: Config, run: Run, ckpt: dict | None, stop: StopFlag, changes: dict, d: Dist,
         device: torch.device) -> Result:
    p = build_parts(cfg, run, ckpt is not None, d, device)
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
        val_stats = validate(p.model, p.val_loader, p.loop, len(p.data.class_names), collect) if p.val_loader else {}
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


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scheduler: Schedule,
                    scaler: torch.amp.GradScaler, loop: Loop) -> dict[str, float]:
    """The rest of the epoch from ``loop.batch`` (0, or where a resumed run stopped); returns the epoch's
    mean loss and throughput. Leaves early, with ``loop.stopping`` set, when asked to stop."""
    model.train()
    meter = loop.meter
    assert meter is not None
    progress = Progress(len(loader), f"epoch {loop.epoch + 1}/{loop.max_epoch}", loop.progress, loop.print_freq)
    optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        loop.batch += 1
        loop.bad.add(batch.bad)
        n = len(batch.labels)
        boundary = loop.batch % loop.accum_steps == 0 or loop.batch == loop.batches_per_epoch
        usable = n > 1 or n == 1 == loader.batch_size  # not all-bad, not a lone leftover (BatchNorm)
        if usable or (loop.dist.enabled and loop.last_batch is not None):
            # Under DDP every rank must run backward (gradients are all-reduced there): a rank whose batch
            # was unusable repeats its previous one with weight 0.
            images, labels = loop.to_device(batch.images, batch.labels) if usable else loop.last_batch[:2]
            if usable and loop.batch_transform is not None:  # uint8 batch: augment + normalise on the device
                images = loop.batch_transform(images, batch.seed)
            with _no_sync(model, boundary), autocast(loop.device, loop.precision):
                loss = F.cross_entropy(model(images), labels) * (1.0 if usable else 0.0)
                scaler.scale(loss / loop.accum_steps).backward()
            if usable:
                meter.add(loss, n)
                loop.last_batch = (images, labels, batch.ids, loss)
        if boundary:
            if loop.last_batch is not None and not check_finite(model, loop.last_batch[3], scaler, loop):
                optimizer.zero_grad(set_to_none=True)  # --nonfinite=skip: drop this step's gradients
                progress.update(n)
                continue
            if loop.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), loop.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loop.global_step += 1
            if loop.global_step % loop.print_freq == 0:
                _log_window(loop, optimizer, progress)
            if loop.after_step():
                break
        progress.update(n)
    progress.close()
    return {"loss": meter.mean(), "images_per_s": progress.throughput}


def _no_sync(model: nn.Module, boundary: bool) -> Any:
    """DDP: skip the gradient all-reduce on accumulation micro-batches (it happens at the boundary)."""
    return model.no_sync() if hasattr(model, "no_sync") and not boundary else contextlib.nullcontext()


def _log_window(loop: Loop, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    assert loop.meter is not None
    window_loss, lr = loop.meter.window(), optimizer.param_groups[0]["lr"]
    if loop.run is not None:
        loop.run.log({"kind": "step", "step": loop.global_step, "epoch": loop.epoch + 1, "train_loss": window_loss,
                      "lr": lr, "images_per_s": progress.throughput})
    progress.note(loss=window_loss, lr=lr)
    _maybe_debug(loop)


@torch.no_grad()
def validate(model: nn.Module, loader: Any, loop: Loop, num_classes: int,
             collect: Collector | None = None) -> dict[str, Any]:
    """Loss, accuracy, log loss and confusion matrix over a whole loader, in eval mode; ``collect`` also
    keeps per-sample probabilities and the worst mistakes (tracking/collect.py). Under DDP each rank
    evaluates its shard with the plain module (no DDP collectives per forward) and the sums are reduced."""
    model = unwrap(model)
    model.eval()
    meter = EvalMeter(num_classes)
    progress = Progress(len(loader), "validate", loop.progress, loop.print_freq)
    for batch in loader:
        loop.bad.add(batch.bad)
        if len(batch.labels):
            images, labels = loop.to_device(batch.images, batch.labels)
            with autocast(loop.device, loop.precision):
                logits = model(images)
            meter.update(logits, labels)
            if collect is not None:
                collect.add(batch.ids, images, labels, logits)
        progress.update(len(batch.labels))
    progress.close()
    model.train()
    if loop.dist.enabled:
        meter.all_reduce(lambda t: distributed.all_reduce_sum(t, loop.dist))
    return meter.compute()


def _validate_now(p: Parts) -> dict[str, Any]:
    if p.val_loader is None:
        raise ValueError("this run has no validation set")
    return validate(p.model, p.val_loader, p.loop, len(p.data.class_names))


def _print_epoch(record: dict, val: dict, class_names: list[str], max_epoch: int) -> None:
    msg = f"epoch {record['epoch']}/{max_epoch}: train loss {record['train_loss']:.4f}"
    if val:
        msg += (f", val loss {val['loss']:.4f}, val accuracy {val['accuracy']:.4f}, "
                f"val logloss {val['logloss']:.4f}")
    log.info(f"{msg}, lr {record['lr']:.3g}, {record['epoch_seconds']:.1f}s")
    if val:
        log.info(format_confusion(val["confusion"], class_names))


_debug_seen: dict[str, float] = {}


def _maybe_debug(loop: Loop) -> None:
    """The seed's trick: while ``--debug-file`` exists, a run on a terminal stops in (i)pdb at the next log
    step (as in the seed); without a terminal it writes one debug dump per version of the file."""
    if not loop.debug_file or not os.path.exists(loop.debug_file) or loop.debug is None:
        return
    mtime = os.path.getmtime(loop.debug_file)
    if not sys.stdin.isatty() and _debug_seen.get(loop.debug_file) == mtime:
        return
    _debug_seen[loop.debug_file] = mtime
    log.info(f"debug file {loop.debug_file}: {loop.debug()}")
