"""What a run trains with (:class:`Parts`), built from the config: data, loaders, the model and its training
step; which of them a checkpoint holds (:func:`checkpoint_parts`) and the checkpoint at a position."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, to_dict
from ..data import (BadFiles, DataBundle, ResumableSampler, SeededItems, ShardSampler, loss_weights, make_loader,
                    train_sampler, write_splits)
from ..io import one_line
from ..models import build_model
from ..models.weights import load_weights
from ..tracking.records import event_record
from ..tracking.run import Run
from ..tracking.tracker import Tracker
from . import distributed
from .checkpoint import CheckpointError, Checkpoints, Stateful, checkpoint_preprocess, restore, state_of
from .criterion import build_criterion
from .distributed import Dist, unwrap
from .ema import build_ema
from .features import FeatureHead, feature_sets
from .optim import OptimizerPart, Schedule, build_optimizer
from .precision import choose_precision
from .resume import RngStates
from .runtime import Runtime, grad_scaler, memory_format, seed_everything
from .state import TrainState
from .step import TrainStep

log = logging.getLogger("dogcat")


@dataclass
class Parts:
    """Everything the epoch loop uses; settings stay in the config."""

    data: DataBundle
    sampler: ResumableSampler
    train_loader: Any
    val_loader: Any | None
    step: TrainStep
    runtime: Runtime
    run: Run
    bad: BadFiles
    batches_per_epoch: int  # of a whole epoch (a resumed one starts part-way: the loader is shorter)
    progress: str           # the display of this process ("none" on ranks other than 0)
    checkpoints: Checkpoints
    tracker: Tracker | None = None  # rank 0's manifest and TensorBoard (set by the trainer once started)
    batch_transform: Any = None  # of the training batches (data.batch_transform; None for cached features)
    features: bool = False  # --cache-features: the loaders serve the backbone's features, step.model is a FeatureHead


def checkpoint_parts(p: Parts, state: TrainState) -> dict[str, Stateful]:
    """What a checkpoint holds besides metadata, by key, in the order a resume loads them: the weights before
    their EMA (which may start from them), the optimizer before the schedule (which may set a new lr in it),
    the RNGs last (building the parts drew from them)."""
    s = p.step
    parts: dict[str, Stateful] = {"model": unwrap(s.model)}  # the plain module: no `module.` prefixes
    if s.ema is not None:
        parts["ema"] = s.ema
    parts.update(optimizer=OptimizerPart(s.optimizer), scheduler=s.scheduler, scaler=s.scaler,
                 loss_meter=s.meter, state=state, rng=RngStates(p.runtime.dist))
    return parts


def checkpoint_state(cfg: Config, p: Parts, state: TrainState) -> dict[str, Any]:
    """The full training state at this position: tensors and plain data only (weights_only loads). Collective
    under DDP (every rank's RNG and loss sums are gathered), so every rank calls it."""
    rt = p.runtime
    meta = {"precision": rt.precision, "device_type": rt.device.type, "monitor": cfg.train.monitor,
            "config": to_dict(cfg), "preprocess": p.data.pre.to_dict(), "layout": p.data.layout}
    return state_of(checkpoint_parts(p, state), meta)


def write_checkpoint(cfg: Config, p: Parts, state: TrainState, **epoch_end: Any) -> None:
    """``last.pt`` at this position (and at an epoch's end best / top-k / archive: see ``Checkpoints.save``):
    every rank gathers its share, rank 0 writes."""
    ckpt = checkpoint_state(cfg, p, state)
    if p.runtime.dist.main:
        p.checkpoints.save(ckpt, **epoch_end)


def restore_run(p: Parts, state: TrainState, ckpt: dict[str, Any], changes: dict[str, list]) -> None:
    """Put a resumed run back exactly where its checkpoint left it and record that in metrics.jsonl. A
    checkpoint whose parts do not fit this run (damaged, or of another model) is one CheckpointError line."""
    try:
        restore(checkpoint_parts(p, state), ckpt)
        if p.data.pre.multilabel:  # the thresholds of the last validation before the stop
            p.data.pre = dataclasses.replace(p.data.pre, thresholds=checkpoint_preprocess(ckpt, p.run.path).thresholds)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot resume {p.run.path} from its checkpoint: {type(e).__name__}: "
                              f"{one_line(e, 300)}") from e
    dropped = p.run.rewind_log(state.global_step, state.epoch)  # what a killed session logged after it
    p.run.log(event_record("resume", epoch=state.epoch, batch_in_epoch=state.batch, step=state.global_step,
                           changed=changes, dropped_log_records=dropped))
    log.info(f"resuming {p.run.path} at epoch {state.epoch + 1}, batch {state.batch} "
             f"(step {state.global_step})" + (f"; changed: {changes}" if changes else ""))


def build_parts(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device, resuming: bool,
                module: nn.Module | None = None) -> Parts:
    """Seed, loaders, model (``module`` when given, else the registry's; DDP-wrapped under torchrun), optimizer,
    schedule, loss scaler, EMA, criterion."""
    seed_everything(cfg.train.seed + d.rank, cfg.train.deterministic)  # per-rank dropout; DDP syncs the init
    if d.main:
        write_splits(data, run.folder.splits)
    sampler, train_loader, val_loader = _loaders(cfg, data.train, data.val, d, device)
    pre = data.pre
    model = module if module is not None else build_model(cfg.model.model, len(pre.classes), pre.in_chans,
                                                          cfg.model.pretrained)
    if cfg.model.load_model_path and not resuming:  # a resumed run has its own weights
        load_weights(model, cfg.model.load_model_path, strict=not cfg.model.load_not_strict)
    model.to(device, memory_format=memory_format(cfg.train.channels_last))
    rt = Runtime(device, _precision(cfg, model, data, run, d, device), cfg.train.channels_last, d)
    bad = BadFiles(run.folder.bad_files if d.main else None)
    optimizer = build_optimizer(model, cfg)  # applies --freeze (requires_grad), before features are computed
    batch_transform = data.batch_transform
    if cfg.model.cache_features:  # the head trains on the frozen backbone's features, computed here once
        model = FeatureHead(model)
        train_set, val_set = feature_sets(model.whole, data, cfg, rt, bad, run.log)
        sampler, train_loader, val_loader = _loaders(cfg, train_set, val_set, d, device)
        rt, batch_transform = replace(rt, channels_last=False), None  # (batch, features) rows: no NCHW layout
    ema = build_ema(model, cfg.optim.ema_decay)
    if cfg.train.compile:
        model.compile()  # in place: state_dict keys stay plain
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
    step = TrainStep(cfg, model, optimizer, scheduler, grad_scaler(device, rt.precision),
                     build_criterion(cfg, len(pre.classes), _class_weights(cfg, data, run)), ema, rt, run.log)
    t = cfg.train
    return Parts(data, sampler, train_loader, val_loader, step, rt, run, bad, batches,
                 t.progress if d.main else "none", Checkpoints(run.ckpt_dir, t.monitor, t.keep_top_k, t.save_every_epochs),
                 batch_transform=batch_transform, features=cfg.model.cache_features)


def _loaders(cfg: Config, train: Any, val: Any | None, d: Dist, device: torch.device
             ) -> tuple[ResumableSampler, Any, Any | None]:
    """The training order and loader of ``train`` (resumable, DDP-sharded, ``--limit-train-batches``) and the
    validation loader of ``val`` (each rank its own share: every item exactly once; ``--limit-val-batches``)."""
    loader_args = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                       pin_memory=device.type == "cuda")
    sampler = train_sampler(cfg.data.sampler, train, cfg.train.seed, d.rank, d.world,
                            cfg.train.limit_train_batches * cfg.data.batch_size)
    train_loader = make_loader(SeededItems(train), shuffle=False, sampler=sampler, **loader_args)
    val_loader = None
    if val is not None:
        limit = cfg.train.limit_val_batches * cfg.data.batch_size
        shard = ShardSampler(len(val), d.rank, d.world, limit) if d.enabled or limit else None
        val_loader = make_loader(val, shuffle=False, sampler=shard, **loader_args)
    return sampler, train_loader, val_loader


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
    counts, weights = loss_weights(cfg.optim.class_weights, data.train, names, data.pre.multilabel)
    run.log(event_record("classes", train_counts=dict(zip(names, counts)) if counts else None,
                         class_weights=dict(zip(names, weights)) if weights else None, sampler=cfg.data.sampler))
    if weights is not None:
        log.info(f"class weights ({cfg.optim.class_weights}): "
                 + ", ".join(f"{n} {w:.4g}" + (f" ({c} images)" if counts else "")
                             for n, w, c in zip(names, weights, counts or [None] * len(names))))
    return weights
