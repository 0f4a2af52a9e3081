"""Experiment trackers (``--logger``) as backends: a registry of callables by name, like the models'.

A backend is opened once per run (rank 0 only) when the data and model are built, gets every metrics.jsonl
record, each validation's pictures, and the run's end. The :class:`~dogcat.tracking.tracker.Tracker` drives
them and switches one off, with one warning, on its first error: a tracker never ends a training. The tracker
libraries (mlflow, wandb) are imported by their backend's opener, never at import time.

One naming for all trackers: :func:`scalar_tags` (``train/loss`` per step, ``epoch/train_loss``,
``val/accuracy`` per epoch), on the step axis of metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..config import LOGGERS, Config, ConfigError, DogcatError
from .records import EPOCH, KIND, LR, STEP, TIME, TRAIN_LOSS, val_name

if TYPE_CHECKING:
    from ..data import DataBundle
    from ..preprocess import Preprocess
    from .collect import Collector

# metrics.jsonl keys (records.py) -> tracker tags; other numeric keys go under train/ (steps) or epoch/ (epochs)
STEP_TAGS = {TRAIN_LOSS: "train/loss", LR: "train/lr", "images_per_s": "train/throughput"}
EPOCH_TAGS = {TRAIN_LOSS: "epoch/train_loss", LR: "epoch/lr", "train_images_per_s": "epoch/throughput",
              "epoch_seconds": "epoch/seconds"}
SKIP = {KIND, STEP, EPOCH, TIME}


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, by tracker tag (events and other kinds: none)."""
    kind = record.get(KIND)
    if kind not in (STEP, EPOCH):
        return {}
    out = {}
    for k, v in record.items():
        if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if kind == STEP:
            out[STEP_TAGS.get(k, f"train/{k}")] = float(v)
        elif (name := val_name(k)) is not None:
            out[f"val/{name}"] = float(v)
        else:
            out[EPOCH_TAGS.get(k, f"epoch/{k}")] = float(v)
    return out


@dataclass
class Session:
    """What a backend is opened with: the run, its config and data, and what it saved last time (its section
    of RUN/trackers.json, e.g. the MLflow run id) so that a resumed run continues the same tracker run."""

    run_dir: Path
    cfg: Config
    resume_step: int | None  # the checkpoint's step when resuming, else None
    bundle: DataBundle
    params: dict[str, Any]  # the flat config, as logged
    saved: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ending:
    """The run's end as the backends record it."""

    status: str  # finished / failed / stopped
    metrics: dict[str, float]  # the final and best metrics ({"hparam/val_accuracy": ...})
    step: int
    artifacts: list[Path]  # files and folders of the run folder to upload (config.yaml, metrics.jsonl, report/ ...)


class Backend:
    """One tracker of one run. Every method may raise: the Tracker then warns once and closes this backend."""

    name = ""

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (kind step / epoch / event)."""

    def validation(self, step: int, stats: dict[str, Any], collect: Collector | None, pre: Preprocess) -> None:
        """An epoch's validation pictures (confusion matrix, mistakes, PR curve) where the tracker shows them."""

    def finish(self, end: Ending) -> None:
        """The end status, final metrics and artifacts."""

    def close(self) -> None:
        """Release files, threads and connections; called once, after finish or after an error."""

    def saved(self) -> dict[str, Any]:
        """What to keep in RUN/trackers.json to continue this tracker's run on resume."""
        return {}


class Unreachable(DogcatError):
    """A tracker's server did not answer before the run started (an outside cause): the CLI exits 1."""

    exit_code = 1


@dataclass(frozen=True)
class Entry:
    name: str
    open: Callable[[Session], Backend]
    package: str | None  # the import a backend needs beyond dogcat's own dependencies
    extra: str | None  # the pip extra that installs it
    check: Callable[[Config], None] | None = None  # before a run folder exists: e.g. is its server there


BACKENDS: dict[str, Entry] = {}


def register_logger(name: str, package: str | None = None, extra: str | None = None,
                    check: Callable[[Config], None] | None = None
                    ) -> Callable[[Callable[[Session], Backend]], Callable[[Session], Backend]]:
    """Decorator: register the opener of a backend under ``name`` (one of config.LOGGERS); a duplicate fails.
    ``check(cfg)`` runs before a run folder exists and raises a DogcatError (one line) when the tracker cannot
    work (its server does not answer)."""
    def deco(fn: Callable[[Session], Backend]) -> Callable[[Session], Backend]:
        if name in BACKENDS:
            raise ValueError(f"logger {name!r} is already registered")
        if name not in LOGGERS:
            raise ValueError(f"logger {name!r} is not declared in config.LOGGERS")
        BACKENDS[name] = Entry(name, fn, package, extra, check)
        return fn

    return deco


def requested(spec: str) -> list[str]:
    """The backend names of a normalised ``--logger`` value."""
    return [] if spec in ("none", "") else spec.split(",")


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a ``None`` in sys.modules blocks it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check_installed(spec: str) -> None:
    """Fail in one line (exit 2), before any run folder exists, when a requested tracker's package is missing."""
    for name in requested(spec):
        entry = BACKENDS[name]
        if entry.package and not installed(entry.package):
            raise ConfigError(f"--logger={name} needs the {entry.package} package, which is not installed: "
                              f"pip install 'dogcat-vision[{entry.extra}]'")


def check_trackers(cfg: Config) -> None:
    """Each requested tracker's package is installed and its own check passes (its server answers): one line
    before any run folder exists."""
    check_installed(cfg.train.logger)
    for name in requested(cfg.train.logger):
        if BACKENDS[name].check is not None:
            BACKENDS[name].check(cfg)
