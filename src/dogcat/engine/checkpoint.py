"""Checkpoints: full-state dicts of tensors and plain data, written atomically, loaded with weights_only.

A checkpoint holds one entry per *part* of the training, each an object with ``state_dict()`` and
``load_state_dict()`` (torch's ``Stateful`` protocol, as torchtitan's checkpointer uses it): model, EMA,
optimizer, scheduler, scaler, loss sums, RNGs and the :class:`TrainState` (``state``), plus plain metadata
(config, preprocess, precision, ...). Saving is :func:`state_of`, a resume :func:`restore`: a loop each; the
special cases (a changed lr, EMA switched on, another number of processes) are methods of those parts.

The sampler has no entry: the training order and augmentations are functions of (seed, epoch, position), and
the position is ``state``'s.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch

from ..io import atomic_link_or_copy as link_or_copy
from ..io import atomic_write_bytes, one_line
from ..metrics import DEFAULT_MONITOR, sort_key
from ..models.calibration import temperature_problem
from ..models.weights import WeightsError, torch_load
from ..preprocess import Preprocess, PreprocessError
from .state import KEYS as STATE_KEYS

# 2: one "preprocess" entry instead of class_names, in_chans, mean, std; 3: the counters (epoch, global_step,
# ...) and world_size under "state", the schedule's base lr in "scheduler". 1 and 2 still load (upgrade()).
FORMAT_VERSION = 3


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def state_of(parts: Mapping[str, Stateful], meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of ``parts`` with ``meta``. Collective under DDP (parts gather every rank's share)."""
    return {**meta, **{key: part.state_dict() for key, part in parts.items()}}


def restore(parts: Mapping[str, Stateful], ckpt: dict[str, Any]) -> None:
    """Put every part back, in the order of ``parts`` (the RNGs last: building the parts drew from them). A
    part the checkpoint lacks gets None (an EMA switched on at this resume starts from the weights)."""
    for key, part in parts.items():
        part.load_state_dict(ckpt.get(key))


def upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A format 1 or 2 checkpoint in format 3's layout: the counters, top-level keys then, under ``state``,
    and the base lr its schedule ran with (its config's) in ``scheduler``. Anything else is read as it was."""
    version = ckpt.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version >= 3:
        return ckpt
    old = dict(ckpt)
    state = {key: old.pop(key) for key in (*STATE_KEYS, "world_size") if key in old}
    optim = (old.get("config") or {}).get("optim") if isinstance(old.get("config"), dict) else None
    if isinstance(old.get("scheduler"), dict) and isinstance(optim, dict) and "lr" in optim:
        old["scheduler"] = {**old["scheduler"], "lr": optim["lr"]}
    return {**old, "state": state}


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it needs on disk, give or take a little."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (plus the format version) atomically: a crash or a full disk leaves the old file or the
    new one. The free space is checked first (the tensors' size is cheap to know)."""
    state = {"format_version": FORMAT_VERSION, **state}
    need = state_bytes(state) + (1 << 16)  # + pickled metadata and the zip directory
    atomic_write_bytes(path, lambda f: torch.save(state, f), need, f"saving checkpoint {path.name}")


REQUIRED = ("format_version", "model", "config")
# what a resume reads besides: a file without them is refused
TRAINING = ("optimizer", "scheduler", "scaler", "loss_meter", "rng")
COUNTS = ("epoch", "global_step")  # in "state", as every reader needs them; a resume also needs batch_in_epoch


class CheckpointError(WeightsError):
    """A file that is not a usable dogcat checkpoint (damaged, or of another shape); the CLI exits 2."""


def check_checkpoint(ckpt: Any, path: Path | str, training: bool = False) -> dict[str, Any]:
    """``ckpt`` in the current layout (:func:`upgrade`) if it has the keys and types a dogcat checkpoint has,
    else :class:`CheckpointError` naming ``path`` and the problems. A checkpoint is data from elsewhere:
    nothing in it is trusted blindly."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a dogcat checkpoint")
    ckpt = upgrade(ckpt)
    state = ckpt.get("state") if isinstance(ckpt.get("state"), dict) else {}
    counts = COUNTS + (("batch_in_epoch",) if training else ())
    missing = [k for k in REQUIRED + (TRAINING if training else ()) if k not in ckpt]
    missing += [k for k in counts if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete dogcat checkpoint (missing {', '.join(missing)})")
    problems = []
    if not isinstance(ckpt["config"], dict):
        problems.append("config is not a mapping")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        problems.append("model is not a state_dict of tensors")
    for key in counts:
        if not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0:
            problems.append(f"{key} is {state[key]!r}, not a count")
    try:
        checkpoint_preprocess(ckpt, path)
    except CheckpointError as e:
        problems.append(str(e).removeprefix(f"{path} is not usable: "))
    if "calibration" in ckpt:
        cal = ckpt["calibration"]
        problem = temperature_problem(cal.get("temperature")) if isinstance(cal, dict) else "calibration is not a mapping"
        if problem:
            problems.append(problem if problem.startswith("calibration") else f"calibration {problem}")
    if problems:
        raise CheckpointError(f"{path} is not a usable dogcat checkpoint: {'; '.join(problems)}")
    return ckpt


def checkpoint_temperature(ckpt: dict[str, Any]) -> float:
    """The temperature ``dogcat calibrate`` stored in a checked checkpoint (its ``calibration`` entry), else 1.0:
    a checkpoint from before calibration existed, or one never calibrated, means the raw softmax."""
    cal = ckpt.get("calibration")
    return float(cal["temperature"]) if isinstance(cal, dict) and "temperature" in cal else 1.0


def store_calibration(path: Path, raw: dict[str, Any], calibration: dict[str, Any]) -> None:
    """Rewrite the checkpoint ``path`` (``raw``: its contents as loaded, in the format it was written in) with
    ``calibration`` (plain data: loads with weights_only) under its own key, atomically: a crash leaves the old
    file or the new one. Nothing else changes, so a resume from it is what it was (a resume ignores the key,
    and the next save, of new weights, has none)."""
    state = {**raw, "calibration": calibration}
    need = state_bytes(state) + (1 << 16)
    atomic_write_bytes(path, lambda f: torch.save(state, f), need, f"saving checkpoint {path.name}")


def checkpoint_preprocess(ckpt: dict[str, Any], path: Path | str) -> Preprocess:
    """The preprocessing a checkpoint's model expects: its ``preprocess`` (format 2), or, in a format-1
    checkpoint, its ``class_names`` / ``in_chans`` / ``mean`` / ``std`` with the size of its config."""
    try:
        if "preprocess" in ckpt:
            return Preprocess.from_dict(ckpt["preprocess"], f"{path}")
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        size = config.get("data", {}).get("image_size") if isinstance(config.get("data"), dict) else None
        chans = ckpt.get("in_chans")
        try:
            return Preprocess.checked(ckpt.get("class_names"), chans, ckpt.get("mean"), ckpt.get("std"), size,
                                      "squash" if chans == 1 else "crop", f"{path}")
        except PreprocessError as e:  # the format-1 keys, by their own names
            raise PreprocessError(str(e).replace("classes is", "class_names is")
                                  .replace("size is", "config data.image_size is")) from None
    except PreprocessError as e:
        raise CheckpointError(f"{e}") from None


def load_checkpoint(path: Path, training: bool = True) -> dict[str, Any]:
    """Load a dogcat checkpoint on the CPU with ``weights_only=True`` and check its shape (see
    :func:`check_checkpoint`; ``training``: also what a resume needs)."""
    return check_checkpoint(torch_load(path), path, training)


TOP = re.compile(r"top-(\d{4,})-(\w+)=(-?[\d.]+(?:e-?\d+)?|nan|inf|-inf)\.pt$")


class Checkpoints:
    """A run's ``checkpoints/`` folder: ``last.pt`` (the resume point), ``best.pt``, the top-k epochs by
    the monitored metric (``top-0003-val_accuracy=0.9125.pt``) and archives every N epochs
    (``epoch-0010.pt``). The bookkeeping is read from the file names, so it continues correctly after a
    resume; every new file is complete before an old one is deleted, and nothing outside the folder is
    touched."""

    def __init__(self, folder: Path, monitor: str = DEFAULT_MONITOR, keep_top_k: int = 3,
                 every_epochs: int = 0) -> None:
        self.folder, self.monitor, self.k, self.every = folder, monitor, keep_top_k, every_epochs
        self.last, self.best = folder / "last.pt", folder / "best.pt"

    def clean_temps(self) -> list[Path]:
        """Remove temp files a killed writer left behind (they were never renamed, so never taken for whole)."""
        stale = list(self.folder.glob(".*.tmp-*")) if self.folder.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def save(self, state: dict[str, Any], epoch_end: bool = False, is_best: bool = False,
             metric: float | None = None) -> None:
        """Write ``last.pt``; at an epoch's end also update best, top-k and the archive."""
        save_checkpoint(self.last, state)
        if not epoch_end:
            return
        epoch = int(state["state"]["epoch"])
        if is_best:
            link_or_copy(self.last, self.best)
        if self.every and epoch % self.every == 0:
            link_or_copy(self.last, self.folder / f"epoch-{epoch:04d}.pt")
        if self.k > 0 and metric is not None:
            link_or_copy(self.last, self.folder / f"top-{epoch:04d}-{self.monitor}={metric:.6g}.pt")
            for stale in self.top()[self.k:]:
                stale.unlink(missing_ok=True)

    def top(self) -> list[Path]:
        """The top-k files, best first (ties: the earlier epoch first)."""
        found = [(float(m.group(3)), int(m.group(1)), p) for p in self.folder.glob("top-*.pt")
                 if (m := TOP.match(p.name)) and m.group(2) == self.monitor]
        return [p for v, e, p in sorted(found, key=lambda t: (sort_key(self.monitor, t[0]), t[1]))]

    def load_latest(self) -> tuple[dict[str, Any], Path]:
        """``last.pt``, or, when it is unreadable (truncated, corrupt), the newest checkpoint that loads."""
        try:
            return load_checkpoint(self.last), self.last
        except Exception as first:  # noqa: BLE001 - any failure to read means: try an older file
            others = sorted((p for p in self.folder.glob("*.pt") if p.name != "last.pt"),
                            key=lambda p: p.stat().st_mtime, reverse=True)
            for other in others:
                try:
                    ckpt = load_checkpoint(other)
                except Exception:  # noqa: BLE001
                    continue
                warnings.warn(f"{self.last} is unreadable ({one_line(first, 200)}); "
                              f"resuming from {other} (epoch {ckpt['state']['epoch']}, step "
                              f"{ckpt['state']['global_step']}) instead")
                return ckpt, other
            raise CheckpointError(f"no readable checkpoint in {self.folder}: {self.last} failed with "
                                  f"{one_line(first)}") from first
