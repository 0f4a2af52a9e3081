"""The training loop's parts: ``Loop`` (settings, position, counters), ``train_one_epoch`` and ``validate``,
read top to bottom. ``trainer.py`` builds them and runs the epochs."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..control import StopFlag
from ..data import BadFiles
from ..tracking.progress import Progress
from ..tracking.run import Run
from ..tracking.tracker import Collector
from . import distributed
from .distributed import Dist, unwrap
from .metrics import EvalMeter
from .optim import Schedule
from .recipes import Criterion
from .steering import check_finite
from .runtime import autocast, memory_format

log = logging.getLogger("dogcat")


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
    criterion: Criterion = field(default_factory=lambda: Criterion(0))  # mixup/cutmix, label smoothing
    ema: Any = None                                                      # timm ModelEmaV3, --ema-decay
    debug_seen: tuple | None = None              # the --debug-file version last acted on

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
            images, targets = loop.criterion(images, labels) if usable else (images, labels)  # mixup/cutmix
            with _no_sync(model, boundary), autocast(loop.device, loop.precision):
                loss = loop.criterion.loss(model(images), targets) * (1.0 if usable else 0.0)
                scaler.scale(loss / loop.accum_steps).backward()
            if usable:
                meter.add(loss, n)
                loop.last_batch = (images, labels, batch.ids, loss)
        if boundary:
            ok, norm = check_finite(model, loop.last_batch[3], scaler, loop) if loop.last_batch else (True, None)
            if not ok:
                optimizer.zero_grad(set_to_none=True)  # --nonfinite=skip: drop this step's gradients
                progress.update(n)
                continue
            if loop.clip_grad_norm:
                scaler.unscale_(optimizer)  # fp16: the norm was not computed above (norm is None)
                if norm is None:
                    nn.utils.clip_grad_norm_(model.parameters(), loop.clip_grad_norm)
                else:  # the check's norm, of these same (unscaled) gradients
                    nn.utils.clip_grads_with_norm_(model.parameters(), loop.clip_grad_norm, norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loop.global_step += 1
            if loop.ema is not None:
                loop.ema.update(unwrap(model), step=loop.global_step)
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


def _maybe_debug(loop: Loop) -> None:
    """The seed's trick, made safe for shared machines: each new version (inode, size, mtime) of
    ``--debug-file`` (default ``RUN/control/debug``) stops a run on a terminal in (i)pdb once, or, without a
    terminal, writes one debug dump. A file owned by another user is ignored (with one warning): on a shared
    /tmp anyone could create it."""
    if not loop.debug_file or loop.debug is None:
        return
    try:
        st = os.stat(loop.debug_file)
    except OSError:
        return
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    if version == loop.debug_seen:
        return
    loop.debug_seen = version
    if st.st_uid != os.getuid():
        log.warning(f"ignoring debug file {loop.debug_file}: it belongs to user id {st.st_uid}, not to you")
        return
    log.info(f"debug file {loop.debug_file}: {loop.debug()}")
