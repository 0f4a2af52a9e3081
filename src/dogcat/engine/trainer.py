"""``train(cfg)``: set up, then ``train_one_epoch`` and ``validate`` once per epoch, checkpoint, repeat."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, dump_yaml, to_dict
from ..data import BadFiles, DataBundle, build_train_val, detect_kind, make_loader, write_splits
from ..models import build_model
from ..models.weights import load_weights
from ..tracking.progress import Progress
from ..tracking.run import Run, find_run
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import EvalMeter, format_confusion
from .optim import Schedule, build_optimizer
from .runtime import autocast, grad_scaler, memory_format, pick_device, seed_everything

log = logging.getLogger("dogcat")


@dataclass
class Result:
    """What a finished training returns."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)


@dataclass
class Loop:
    """Settings and counters shared by ``train_one_epoch`` and ``validate``."""

    device: torch.device
    precision: str
    channels_last: bool
    bad: BadFiles
    accum_steps: int = 1
    clip_grad_norm: float | None = None
    print_freq: int = 20
    progress: str = "auto"
    debug_file: str | None = None
    run: Run | None = None
    global_step: int = 0
    epoch: int = 0
    max_epoch: int = 1

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True, memory_format=memory_format(self.channels_last))
        return images, labels.to(self.device, non_blocking=True)


def better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor.endswith("accuracy") else value < best


def train(cfg: Config) -> Result:
    """Train as ``cfg`` says; ``cfg.train.resume`` continues a run in its own folder."""
    if cfg.train.resume:
        run = Run(find_run(cfg.train.resume, cfg.train.runs_root))
        ckpt = load_checkpoint(run.checkpoint("last"))
        dump_yaml(cfg, run.path / "config.yaml")  # record what changed on resume (e.g. max_epoch)
    else:
        detect_kind(cfg.data)  # a wrong data path fails here, before a run folder is made
        run, ckpt = Run.create(cfg), None
    run.set_status("running")
    try:
        result = _fit(cfg, run, ckpt)
    except KeyboardInterrupt:
        run.set_status("stopped")
        raise
    except BaseException:
        run.set_status("failed")
        raise
    run.set_status("finished")
    return result


@dataclass
class Parts:
    """Everything a run trains with, built from the config."""

    data: DataBundle
    train_loader: Any
    val_loader: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    scaler: torch.amp.GradScaler
    loop: Loop


def build_parts(cfg: Config, run: Run, resuming: bool) -> Parts:
    """Seed, pick the device, build data, loaders, model, optimizer, schedule and loss scaler."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = pick_device(cfg.train)
    data = build_train_val(cfg.data)
    write_splits(data, run.path)
    loader_args = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                       pin_memory=device.type == "cuda")
    train_loader = make_loader(data.train, shuffle=True, **loader_args)
    val_loader = make_loader(data.val, shuffle=False, **loader_args) if data.val is not None else None

    model = build_model(cfg.model.model, len(data.class_names), data.in_chans, cfg.model.pretrained)
    if cfg.model.load_model_path and not resuming:  # a resumed run has its own weights
        load_weights(model, cfg.model.load_model_path, strict=not cfg.model.load_not_strict)
    model.to(device, memory_format=memory_format(cfg.train.channels_last))
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.accum_steps)
    scheduler = Schedule(optimizer, cfg.optim, steps_per_epoch, cfg.train.max_epoch)
    loop = Loop(device=device, precision=cfg.train.precision, channels_last=cfg.train.channels_last,
                bad=BadFiles(run.path / "bad_files.txt"), accum_steps=cfg.optim.accum_steps,
                clip_grad_norm=cfg.optim.clip_grad_norm, print_freq=cfg.train.print_freq,
                progress=cfg.train.progress, debug_file=cfg.train.debug_file, run=run,
                max_epoch=cfg.train.max_epoch)
    return Parts(data, train_loader, val_loader, model, optimizer, scheduler,
                 grad_scaler(device, cfg.train.precision), loop)


def checkpoint_state(cfg: Config, p: Parts, epoch: int, best: float | None, best_epoch: int,
                     record: dict) -> dict[str, Any]:
    """The full training state after ``epoch`` epochs: tensors and plain data only (weights_only loads)."""
    return {"model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "scaler": p.scaler.state_dict(),
            "epoch": epoch, "global_step": p.loop.global_step, "best_metric": best, "best_epoch": best_epoch,
            "monitor": cfg.train.monitor, "metrics": record, "config": to_dict(cfg),
            "class_names": p.data.class_names, "in_chans": p.data.in_chans, "mean": list(p.data.mean),
            "std": list(p.data.std), "data_kind": p.data.kind}


def _fit(cfg: Config, run: Run, ckpt: dict | None) -> Result:
    p = build_parts(cfg, run, resuming=ckpt is not None)
    best, best_epoch, start_epoch = None, -1, 0
    if ckpt is not None:
        p.model.load_state_dict(ckpt["model"])
        p.optimizer.load_state_dict(ckpt["optimizer"])
        p.scheduler.load_state_dict(ckpt["scheduler"])
        p.scaler.load_state_dict(ckpt["scaler"])
        start_epoch, p.loop.global_step = ckpt["epoch"], ckpt["global_step"]
        best, best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        run.log({"event": "resume", "epoch": start_epoch, "step": p.loop.global_step})
        log.info(f"resuming {run.path} after epoch {start_epoch} (step {p.loop.global_step})")
    log.info(f"run folder: {run.path}")
    log.info(f"{cfg.model.model}: {sum(x.numel() for x in p.model.parameters()):,} parameters on "
             f"{p.loop.device}, {len(p.data.train)} training / {len(p.data.val) if p.data.val else 0} "
             f"validation images, classes {p.data.class_names}")

    history = []
    for epoch in range(start_epoch, cfg.train.max_epoch):
        p.loop.epoch = epoch
        t0 = time.perf_counter()
        train_stats = train_one_epoch(p.model, p.train_loader, p.optimizer, p.scheduler, p.scaler, p.loop)
        val_stats = validate(p.model, p.val_loader, p.loop, len(p.data.class_names)) if p.val_loader else {}
        p.scheduler.epoch_end(train_stats["loss"])

        record = {"epoch": epoch + 1, "step": p.loop.global_step, "train_loss": train_stats["loss"],
                  "train_images_per_s": train_stats["images_per_s"], "lr": p.optimizer.param_groups[0]["lr"],
                  "epoch_seconds": time.perf_counter() - t0,
                  **{f"val_{k}": v for k, v in val_stats.items() if k != "confusion"}}
        run.log(record)
        history.append(record)
        _print_epoch(record, val_stats, p.data.class_names, cfg.train.max_epoch)

        # without a validation set, judge by the training loss
        metric = record.get(cfg.train.monitor, -record["train_loss"] if cfg.train.monitor.endswith("accuracy")
                            else record["train_loss"])
        is_best = better(metric, best, cfg.train.monitor)
        if is_best:
            best, best_epoch = metric, epoch + 1
        save_checkpoint(run.checkpoint("last"), checkpoint_state(cfg, p, epoch + 1, best, best_epoch, record))
        if is_best:
            _link_or_copy(run.checkpoint("last"), run.checkpoint("best"))
    if p.loop.bad.count:
        log.warning(f"{p.loop.bad.count} unreadable image(s) were skipped; list in {run.path / 'bad_files.txt'}")
    log.info(f"best {cfg.train.monitor} {best if best is not None else float('nan'):.4f} at epoch {best_epoch}; "
             f"checkpoints in {run.ckpt_dir}")
    return Result(run.path, best, best_epoch, history)


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scheduler: Schedule,
                    scaler: torch.amp.GradScaler, loop: Loop) -> dict[str, float]:
    """One pass over the training data; returns the mean loss and the throughput."""
    model.train()
    progress = Progress(len(loader), f"epoch {loop.epoch + 1}/{loop.max_epoch}", loop.progress, loop.print_freq)
    loss_sum, seen = torch.zeros((), device=loop.device), 0
    window_sum, window_n = torch.zeros((), device=loop.device), 0
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(loader):
        loop.bad.add(batch.bad)
        if len(batch.labels) == 0 or len(batch.labels) == 1 < (loader.batch_size or 1):
            continue  # all bad, or a lone leftover image: BatchNorm cannot train on one
        images, labels = loop.to_device(batch.images, batch.labels)
        with autocast(loop.device, loop.precision):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss / loop.accum_steps).backward()
        if (i + 1) % loop.accum_steps == 0 or i + 1 == len(loader):
            if loop.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), loop.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loop.global_step += 1
        # Sums stay on the device; .item() (a sync on GPUs) happens only every print_freq steps.
        loss_sum += loss.detach().float() * len(labels)
        window_sum += loss.detach().float() * len(labels)
        seen, window_n = seen + len(labels), window_n + len(labels)
        if (i + 1) % loop.print_freq == 0:
            window_loss = (window_sum / window_n).item()
            lr = optimizer.param_groups[0]["lr"]
            if loop.run is not None:
                loop.run.log({"step": loop.global_step, "epoch": loop.epoch + 1, "train_loss": window_loss,
                              "lr": lr, "images_per_s": progress.throughput})
            window_sum.zero_()
            window_n = 0
            _maybe_debug(loop)
            progress.update(len(labels), loss=window_loss, lr=lr)
        else:
            progress.update(len(labels))
    progress.close()
    return {"loss": (loss_sum / max(1, seen)).item(), "images_per_s": progress.throughput}


@torch.no_grad()
def validate(model: nn.Module, loader: Any, loop: Loop, num_classes: int) -> dict[str, Any]:
    """Loss, accuracy, log loss and confusion matrix over a whole loader, in eval mode."""
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
        progress.update(len(batch.labels))
    progress.close()
    model.train()
    return meter.compute()


def _print_epoch(record: dict, val: dict, class_names: list[str], max_epoch: int) -> None:
    msg = f"epoch {record['epoch']}/{max_epoch}: train loss {record['train_loss']:.4f}"
    if val:
        msg += (f", val loss {val['loss']:.4f}, val accuracy {val['accuracy']:.4f}, "
                f"val logloss {val['logloss']:.4f}")
    log.info(f"{msg}, lr {record['lr']:.3g}, {record['epoch_seconds']:.1f}s")
    if val:
        log.info(format_confusion(val["confusion"], class_names))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same bytes as ``src`` atomically (a hard link is free; copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


_debug_warned = False


def _maybe_debug(loop: Loop) -> None:
    """The seed's trick: ``touch /tmp/debug`` drops a running job into (i)pdb at the next log step."""
    global _debug_warned
    if not loop.debug_file or not os.path.exists(loop.debug_file):
        return
    if not sys.stdin.isatty():
        if not _debug_warned:
            warnings.warn(f"debug file {loop.debug_file} exists but there is no terminal to debug on; ignored")
            _debug_warned = True
        return
    try:
        import ipdb as debugger  # type: ignore[import-not-found]
    except ImportError:
        import pdb as debugger
    debugger.set_trace()
