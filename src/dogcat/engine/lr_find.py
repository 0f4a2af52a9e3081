"""The learning-rate range test (Smith 2015; fast.ai's lr_find): train for ~100 steps while the learning
rate grows exponentially from ``start`` to ``end``, record the smoothed loss, stop when it diverges, and
suggest the lr of steepest descent. The model and optimizer are put back as they were afterwards."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..config import Config, ConfigError
from ..io import atomic_write_figure, atomic_write_text
from .runtime import autocast, memory_format

log = logging.getLogger("dogcat")


@dataclass
class LRFind:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)      # smoothed (bias-corrected exponential average)
    suggestion: float | None = None                         # steepest descent of the smoothed loss
    min_loss_lr: float | None = None                        # lr at the lowest smoothed loss (suggest /10)
    plot: Path | None = None


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Iterable],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
               start: float = 1e-7, end: float = 10.0, steps: int = 100, beta: float = 0.98,
               diverge: float = 4.0, precision: str = "fp32", channels_last: bool = False) -> LRFind:
    """Run the test on ``model``/``optimizer`` and restore both (and the RNGs) afterwards. ``batches()``
    yields ``(images, labels)`` and is called again when it runs out before ``steps``."""
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    out, avg, best, gamma = LRFind(), 0.0, math.inf, (end / start) ** (1 / max(1, steps - 1))
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        it = iter(batches())
        for i in range(steps):
            try:
                images, labels = next(it)
            except StopIteration:
                it = iter(batches())
                images, labels = next(it)
            lr = start * gamma ** i
            for g in optimizer.param_groups:
                g["lr"] = lr
            images = images.to(device, memory_format=memory_format(channels_last))
            with autocast(device, precision):
                loss = loss_fn(model(images), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            if not math.isfinite(smooth) or (i > 0 and smooth > diverge * best):
                break  # diverged: the rest of the curve says nothing
            best = min(best, smooth)
            out.lrs.append(lr)
            out.losses.append(smooth)
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    optimizer.zero_grad(set_to_none=True)
    model.train(was_training)
    _suggest(out)
    return out


def _suggest(r: LRFind) -> None:
    """Steepest (most negative) slope of loss over log(lr), skipping the flat start and the blow-up."""
    if len(r.losses) < 3:
        return
    r.min_loss_lr = r.lrs[min(range(len(r.losses)), key=r.losses.__getitem__)]
    lo, hi = len(r.losses) // 10, max(len(r.losses) // 10 + 2, len(r.losses) - len(r.losses) // 20)
    slopes = [(r.losses[i + 1] - r.losses[i - 1]) / (math.log(r.lrs[i + 1]) - math.log(r.lrs[i - 1]))
              for i in range(max(1, lo), min(hi, len(r.losses) - 1))]
    if slopes:
        r.suggestion = r.lrs[max(1, lo) + min(range(len(slopes)), key=slopes.__getitem__)]
    else:
        r.suggestion = r.min_loss_lr / 10


def plot(r: LRFind, path: Path) -> Path:
    """Smoothed loss against lr (log x), the suggestion marked; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(r.lrs, r.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    if r.suggestion:
        ax.axvline(r.suggestion, color="tab:red", linestyle="--", label=f"suggested {r.suggestion:.2g}")
        ax.legend()
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    try:
        return atomic_write_figure(path, fig)  # whole or not at all; a link at the name is replaced
    finally:
        plt.close(fig)


def lr_find(cfg: Config, output: str | Path | None = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100) -> LRFind:
    """The range test for ``cfg``'s model, data, optimizer and precision (fresh weights, or
    ``load_model_path``). Writes ``lr_find.png`` + ``lr_find.json`` to ``output`` (a .png path or a
    folder), default ``<runs_root>/lr-find-<model>-<time>/``."""
    from ..data import SeededItems, build_train_val, loss_weights, make_loader, train_sampler
    from ..models import build_model, pretrained_input
    from ..models.weights import load_weights
    from .optim import build_optimizer
    from .criterion import build_criterion
    from .runtime import pick_device, seed_everything

    if not (0 < start < end < math.inf and 2 <= steps <= 100_000):
        raise ConfigError(f"lr-find needs 0 < --start-lr < --end-lr (finite) and 2 <= --steps <= 100000, got "
                          f"--start-lr={start:g} --end-lr={end:g} --steps={steps}")
    device = pick_device(cfg.train)
    seed_everything(cfg.train.seed)
    data = build_train_val(cfg.data, model_input=pretrained_input(cfg.model.model, cfg.model.pretrained))
    sampler = train_sampler(cfg.data.sampler, data.train, cfg.train.seed)
    sampler.set_epoch(0)
    loader = make_loader(SeededItems(data.train), shuffle=False, sampler=sampler, batch_size=cfg.data.batch_size,
                         num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    model = build_model(cfg.model.model, len(data.pre.classes), data.pre.in_chans, cfg.model.pretrained)
    if cfg.model.load_model_path:
        load_weights(model, cfg.model.load_model_path, strict=not cfg.model.load_not_strict)
    model.to(device, memory_format=memory_format(cfg.train.channels_last))
    optimizer = build_optimizer(model, cfg)
    names = data.pre.classes
    crit = build_criterion(cfg, len(names), loss_weights(cfg.optim.class_weights, data.train, names,
                                                         data.pre.multilabel)[1])
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision

    def batches() -> Iterable[Any]:
        for b in loader:
            images = b.images.to(device)
            if data.batch_transform is not None:
                images = data.batch_transform(images, b.seed)
            if len(b.labels) > 1:
                yield crit(images, b.labels.to(device))

    res = range_test(model, optimizer, batches, crit.loss, device, start, end, steps, precision=precision,
                     channels_last=cfg.train.channels_last)
    out = Path(output) if output else Path(cfg.train.runs_root) / f"lr-find-{cfg.model.model.replace(':', '-')}-" \
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    png = out if out.suffix == ".png" else out / "lr_find.png"
    res.plot = plot(res, png)
    atomic_write_text(png.with_suffix(".json"), json.dumps({"lrs": res.lrs, "losses": res.losses,
                                                           "suggestion": res.suggestion, "min_loss_lr": res.min_loss_lr}))
    return res
