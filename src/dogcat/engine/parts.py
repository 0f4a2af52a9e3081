"""What a run trains with (:class:`Parts`), built from the config: data, loaders, the model and its step."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..config import Config
from ..data import (BadFiles, DataBundle, ResumableSampler, SeededItems, ShardSampler, class_counts, class_weights,
                    make_loader, train_sampler, write_splits)
from ..models import build_model
from ..models.weights import load_weights
from ..tracking.records import event_record
from ..tracking.run import Run
from . import distributed
from .distributed import Dist
from .optim import Schedule, build_optimizer
from .recipes import build_criterion, build_ema, choose_precision
from .runtime import Runtime, grad_scaler, memory_format, seed_everything
from .step import Step

log = logging.getLogger("dogcat")


@dataclass
class Parts:
    """Everything the epoch loop uses; settings stay in the config."""

    data: DataBundle
    sampler: ResumableSampler
    train_loader: Any
    val_loader: Any | None
    step: Step
    runtime: Runtime
    run: Run
    bad: BadFiles
    batches_per_epoch: int  # of a whole epoch (a resumed one starts part-way: the loader is shorter)
    progress: str           # the display of this process ("none" on ranks other than 0)


def build_parts(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device, resuming: bool) -> Parts:
    """Seed, loaders, model (DDP-wrapped under torchrun), optimizer, schedule, loss scaler, EMA, criterion."""
    seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)  # per-rank dropout; DDP syncs the init
    if d.main:
        write_splits(data, run.folder.splits)
    loader_args = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                       pin_memory=device.type == "cuda")
    sampler = train_sampler(cfg.data.sampler, data.train, cfg.train.seed, d.rank, d.world,
                            cfg.train.limit_train_batches * cfg.data.batch_size)
    train_loader = make_loader(SeededItems(data.train), shuffle=False, sampler=sampler, **loader_args)
    val_loader = None
    if data.val is not None:  # under DDP each rank validates its own share: every image exactly once
        limit = cfg.train.limit_val_batches * cfg.data.batch_size
        shard = ShardSampler(len(data.val), d.rank, d.world, limit) if d.enabled or limit else None
        val_loader = make_loader(data.val, shuffle=False, sampler=shard, **loader_args)

    pre = data.pre
    model = build_model(cfg.model.model, len(pre.classes), pre.in_chans, cfg.model.pretrained)
    if cfg.model.load_model_path and not resuming:  # a resumed run has its own weights
        load_weights(model, cfg.model.load_model_path, strict=not cfg.model.load_not_strict)
    model.to(device, memory_format=memory_format(cfg.train.channels_last))
    rt = Runtime(device, _precision(cfg, model, data, run, d, device), cfg.train.channels_last, d)
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
    run.log(event_record("setup", world_size=d.world, global_batch=global_batch, lr_scaling=cfg.train.lr_scaling,
                         lr=cfg.optim.lr * lr_factor))
    batches = math.ceil(sampler.per_rank / cfg.data.batch_size)
    scheduler = Schedule(optimizer, cfg.optim, math.ceil(batches / cfg.optim.accum_steps), cfg.train.max_epoch)
    step = Step(cfg, model, optimizer, scheduler, grad_scaler(device, rt.precision),
                build_criterion(cfg, len(pre.classes), _class_weights(cfg, data, run)), ema, rt, run.log)
    return Parts(data, sampler, train_loader, val_loader, step, rt, run,
                 BadFiles(run.folder.bad_files if d.main else None), batches,
                 cfg.train.progress if d.main else "none")


def _precision(cfg: Config, model: nn.Module, data: DataBundle, run: Run, d: Dist, device: torch.device) -> str:
    """``--precision``, with ``auto`` resolved by a timed probe (rank 0's choice holds for all ranks)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    size, t = cfg.data.image_size, cfg.train
    choice, info = choose_precision(model, device, (data.pre.in_chans, size, size), cfg.data.batch_size,
                                    t.channels_last, cfg.model.model, len(data.pre.classes))
    choice = distributed.broadcast(choice, d)
    timed = ", ".join(f"{k} {v * 1000:.0f} ms/step" for k, v in info["seconds"].items()) or info.get("reason", "")
    log.info(f"--precision=auto chose {choice} ({timed}{', cached' if info['cached'] else ''})")
    run.log(event_record("precision", chosen=choice, **info))
    return choice


def _class_weights(cfg: Config, data: DataBundle, run: Run) -> list[float] | None:
    """``--class-weights`` resolved on the training set; logged (and into metrics.jsonl) with the class counts
    they came from."""
    names = list(data.pre.classes)
    counts = class_counts(data.train, len(names))
    weights = class_weights(cfg.optim.class_weights, counts, names)
    run.log(event_record("classes", train_counts=dict(zip(names, counts)) if counts else None,
                         class_weights=dict(zip(names, weights)) if weights else None, sampler=cfg.data.sampler))
    if weights is not None:
        log.info(f"class weights ({cfg.optim.class_weights}): "
                 + ", ".join(f"{n} {w:.4g}" + (f" ({c} images)" if counts else "")
                             for n, w, c in zip(names, weights, counts or [None] * len(names))))
    return weights
