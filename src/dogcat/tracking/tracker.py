"""Experiment memory of a training run: manifest.json and the trackers of ``--logger`` (TensorBoard by default,
MLflow, W&B; see loggers.py), driven by a few trainer hooks.

The trainer calls ``Tracker.start`` (before anything runs), ``setup`` (data and model built),
``collector`` / ``epoch_end`` (each validation), and adds the tracker to the run's sinks: every metrics.jsonl
record then reaches it through ``Run.log`` and the final status through ``Run.set_status`` (``finish``).
Only rank 0 tracks: whoever starts the tracker says which process this is (:class:`~dogcat.processes.Dist`).
The tracker knows the run folder (:class:`~dogcat.tracking.folder.RunFolder`), not its writer.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config, flat_config, to_dict
from ..console import redact
from ..data import DataBundle
from ..io import atomic_write_text, one_line
from ..jsonfiles import read_json
from ..metrics import best_of, monitors
from ..preprocess import Preprocess
from ..processes import Dist
from . import mlflow_logger, tensorboard, wandb_logger  # noqa: F401  (each registers its backend)
from .collect import Collector
from .folder import RunFolder
from .loggers import BACKENDS, Backend, Ending, Session, check_installed, check_trackers, requested
from .manifest import Manifest, data_fingerprint
from .records import EPOCH, STEP, TRAIN_LOSS, is_kind
from .tensorboard import GRID_IMAGES, TensorBoardBackend

log = logging.getLogger("dogcat")


def check_loggers(cfg: Config | str) -> None:
    """``--logger``'s packages are installed (else one ConfigError line, exit 2) and, given the config, each
    tracker's server answers (else one line, exit 1): call before making a run folder."""
    if isinstance(cfg, str):
        check_installed(cfg)
    else:
        check_trackers(cfg)


def tracker_params(params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The flat config as trackers store it (MLflow params, W&B config): an absolute path becomes relative to the
    run folder, so a shared tracking server learns no absolute path of this machine (credentials in URIs are
    masked already, config.to_dict)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and os.path.isabs(v):
            try:
                v = os.path.relpath(v, run_dir.resolve())
            except ValueError:
                pass
        out[k] = v
    return out


class Tracker:
    """manifest.json + the ``--logger`` backends for one run; a backend that fails warns once and is switched off.
    A :class:`~dogcat.tracking.records.RecordSink` of the run (``log_record``, ``finish``)."""

    def __init__(self, folder: RunFolder, cfg: Config, resume_step: int | None) -> None:
        self.folder, self.cfg, self.resume_step = folder, cfg, resume_step
        self.manifest = Manifest(folder.path)
        self.backends: list[Backend] = []
        self.pre: Preprocess | None = None
        self.done = False

    @classmethod
    def start(cls, folder: RunFolder, cfg: Config, dist: Dist, resume_step: int | None = None) -> "Tracker | None":
        """Write the manifest's start (atomically); None on ranks other than 0 (``dist``: this process)."""
        if not dist.main:
            return None
        tracker = cls(folder, cfg, resume_step)
        tracker.manifest.start(cfg)
        return tracker

    def setup(self, bundle: DataBundle, device: str) -> None:
        """Data and model are built: fingerprint the data, open the trackers (TensorBoard shows augmented inputs)."""
        self.pre = bundle.pre
        splits = self.folder.split_files()
        try:
            data = data_fingerprint(bundle, self.cfg)
        except Exception as e:  # noqa: BLE001  # a record of the data must not stop the training on it
            data = {"layout": bundle.layout, "error": f"{type(e).__name__}: {e}"}
        self.manifest.update(device=device, data=data, splits=splits)
        saved = self._saved() if self.resume_step is not None else {}
        params = tracker_params(flat_config(to_dict(self.cfg)), self.folder.path)
        for name in requested(self.cfg.train.logger):
            session = Session(self.folder.path, self.cfg, self.resume_step, bundle, params, saved.get(name, {}))
            opened: list[Backend] = []
            self._guard(name, lambda: opened.append(BACKENDS[name].open(session)))
            self.backends += opened
        self._save()

    def _saved(self) -> dict[str, Any]:
        try:  # bounded, regular files only: a run folder may come from elsewhere
            return read_json(self.folder.trackers, "tracker record", limit=1 << 20)
        except (OSError, ValueError):  # none yet, or damaged (MalformedFile): each tracker starts a new run
            return {}

    def _save(self) -> None:
        """RUN/trackers.json: what each tracker needs to continue its run on resume (MLflow run id, W&B id)."""
        keep = {**self._saved(), **{b.name: b.saved() for b in self.backends if b.saved()}}
        if keep:
            try:
                atomic_write_text(self.folder.trackers, json.dumps(keep, indent=2) + "\n")
            except OSError as e:
                log.warning(f"could not write {self.folder.trackers}: {one_line(e)}")

    def _guard(self, name: str, fn: Callable[[], None], backend: Backend | None = None) -> None:
        """Run a tracker call; a failure (disk full, server down, a plugin error) must not end the training:
        one warning, and that tracker is closed and left out from then on."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"{name} logging switched off: {type(e).__name__}: {redact(one_line(e))}")
            if backend is not None:
                if backend in self.backends:
                    self.backends.remove(backend)
                try:
                    backend.close()
                except Exception:  # noqa: BLE001
                    pass

    def _each(self, call: Callable[[Backend], None]) -> None:
        for b in list(self.backends):
            self._guard(b.name, lambda: call(b), b)

    def log_record(self, record: dict[str, Any]) -> None:
        self._each(lambda b: b.log(record))

    def _tensorboard(self) -> TensorBoardBackend | None:
        return next((b for b in self.backends if isinstance(b, TensorBoardBackend)), None)

    def model_graph(self, model: torch.nn.Module, device: torch.device | str) -> None:
        """TensorBoard's model graph, once per run (not again on resume); a model that cannot be traced is
        logged, with the reason, instead."""
        tbb, pre = self._tensorboard(), self.pre
        if tbb is None or pre is None or self.resume_step is not None:
            return
        example = torch.zeros(1, pre.in_chans, pre.size, pre.size, device=device)

        def write() -> None:
            reason = tbb.tb.graph(model, example)
            if reason:
                log.info(f"TensorBoard model graph skipped: {reason}")
                tbb.tb.text("graph", f"model graph skipped: {reason}")
        self._guard(tbb.name, write, tbb)

    def embeddings(self, step: int, model: torch.nn.Module, dataset: Any, device: torch.device | str,
                   batch_size: int) -> None:
        """Penultimate features of up to 1,000 validation images for TensorBoard's projector."""
        tbb, pre = self._tensorboard(), self.pre
        if tbb is None or pre is None or dataset is None:
            return
        from .embeddings import penultimate

        def write() -> None:
            try:
                got = penultimate(model, dataset, device, pre.mean, pre.std, batch_size)
            except Exception as e:  # noqa: BLE001  # the model's failure, not TensorBoard's: keep logging
                log.warning(f"TensorBoard embeddings skipped: {type(e).__name__}: {e}")
                return
            if got is None:
                log.info("TensorBoard embeddings skipped: the model has no classifier head to take features from")
                return
            tbb.tb.embeddings(step, *got, list(pre.classes))
        self._guard(tbb.name, write, tbb)

    def collector(self) -> Collector:
        assert self.pre is not None, "setup() first"
        return Collector(len(self.pre.classes), keep_images=GRID_IMAGES)

    def epoch_end(self, step: int, val_stats: dict[str, Any], collect: Collector | None) -> None:
        if self.pre is not None:
            pre = self.pre
            self._each(lambda b: b.validation(step, val_stats, collect, pre))

    def final_metrics(self) -> tuple[dict[str, float], int]:
        """``({"hparam/...": value}, step)`` from metrics.jsonl: the last epoch's metrics and the best one."""
        records = self.folder.records()
        epochs = [r for r in records if is_kind(r, EPOCH)]
        steps = [r[STEP] for r in records if isinstance(r.get(STEP), int)]
        out: dict[str, float] = {}
        if epochs:
            last = epochs[-1]
            for k in (*monitors(), TRAIN_LOSS):  # every metric of the table, as logged
                if isinstance(last.get(k), (int, float)):
                    out[f"hparam/{k}"] = float(last[k])
            monitor = self.cfg.train.monitor
            values = [r[monitor] for r in epochs if isinstance(r.get(monitor), (int, float))]
            if values:
                out[f"hparam/best_{monitor}"] = float(values[best_of(monitor, values)])
            out["hparam/epochs"] = float(last.get(EPOCH, len(epochs)))
        return out, max(steps, default=0)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """Complete the manifest (end time, exit status), then end each tracker's run (status, final metrics,
        artifacts) and close it."""
        if self.done:
            return
        self.done = True
        try:
            self.manifest.finish(status, error)
        except Exception as e:  # noqa: BLE001  # never hide the error that ended the run
            log.warning(f"could not complete {self.folder.manifest}: {e}")
        if not self.backends:
            return
        metrics, step = self.final_metrics()
        end = Ending(status, metrics, step, self.folder.artifacts())
        self._each(lambda b: b.finish(end))
        self._each(lambda b: b.close())
        self.backends = []
