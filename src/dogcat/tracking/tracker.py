"""Experiment memory of a training run: manifest.json and the trackers of ``--logger`` (TensorBoard by default,
MLflow, W&B; see loggers.py), driven by a few trainer hooks.

The trainer calls ``Tracker.start`` (before anything runs), ``setup`` (data and model built),
``collector`` / ``epoch_end`` (each validation) and, through ``Run.set_status``, ``finish``; every
metrics.jsonl record reaches the trackers through ``Run.log``. Only rank 0 tracks.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import Config, flat_config, to_dict
from ..data import DataBundle
from ..io import atomic_write_text, one_line, read_small
from ..reading import loads_json
from ..metrics import best_of, monitors
from ..preprocess import Preprocess
from . import mlflow_logger, tensorboard, wandb_logger  # noqa: F401  (each registers its backend)
from .collect import Collector
from .loggers import BACKENDS, Backend, Ending, Session, check_installed, requested
from .manifest import Manifest, data_fingerprint
from .tensorboard import GRID_IMAGES, TensorBoardBackend

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("dogcat")

SAVED = "trackers.json"  # each tracker's own run id, so that a resumed run continues it
ARTIFACTS = ("config.yaml", "metrics.jsonl", "manifest.json", "result.json", "report")


def is_main_process() -> bool:
    """Rank 0 of a distributed job, or a plain process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def check_loggers(spec: str) -> None:
    """``--logger``'s packages are installed, or one ConfigError line (exit 2): call before making a run folder."""
    check_installed(spec)


class Tracker:
    """manifest.json + the ``--logger`` backends for one run; a backend that fails warns once and is switched off."""

    def __init__(self, run: Run, cfg: Config, resume_step: int | None) -> None:
        self.run, self.cfg, self.resume_step = run, cfg, resume_step
        self.manifest = Manifest(run.path)
        self.backends: list[Backend] = []
        self.pre: Preprocess | None = None
        self.done = False

    @classmethod
    def start(cls, run: Run, cfg: Config, resume_step: int | None = None) -> "Tracker | None":
        """Write the manifest's start (atomically); None on ranks other than 0."""
        if not is_main_process():
            return None
        tracker = cls(run, cfg, resume_step)
        tracker.manifest.start(cfg)
        return tracker

    def setup(self, bundle: DataBundle, device: str) -> None:
        """Data and model are built: fingerprint the data, open the trackers (TensorBoard shows augmented inputs)."""
        self.pre = bundle.pre
        splits = sorted(str(x.relative_to(self.run.path)) for x in (self.run.path / "splits").glob("*.csv"))
        try:
            data = data_fingerprint(bundle, self.cfg)
        except Exception as e:  # noqa: BLE001  # a record of the data must not stop the training on it
            data = {"kind": bundle.layout, "error": f"{type(e).__name__}: {e}"}
        self.manifest.update(device=device, data=data, splits=splits)
        saved = self._saved() if self.resume_step is not None else {}
        params = flat_config(to_dict(self.cfg))
        for name in requested(self.cfg.train.logger):
            session = Session(self.run.path, self.cfg, self.resume_step, bundle, params, saved.get(name, {}))
            opened: list[Backend] = []
            self._guard(name, lambda: opened.append(BACKENDS[name].open(session)))
            self.backends += opened
        self._save()

    def _saved(self) -> dict[str, Any]:
        try:
            out = loads_json(read_small(self.run.path / SAVED, 1 << 20))  # a regular file; nesting capped
            return out if isinstance(out, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        """RUN/trackers.json: what each tracker needs to continue its run on resume (MLflow run id, W&B id)."""
        keep = {**self._saved(), **{b.name: b.saved() for b in self.backends if b.saved()}}
        if keep:
            try:
                atomic_write_text(self.run.path / SAVED, json.dumps(keep, indent=2) + "\n")
            except OSError as e:
                log.warning(f"could not write {self.run.path / SAVED}: {one_line(e)}")

    def _guard(self, name: str, fn: Callable[[], None], backend: Backend | None = None) -> None:
        """Run a tracker call; a failure (disk full, server down, a plugin error) must not end the training:
        one warning, and that tracker is closed and left out from then on."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"{name} logging switched off: {type(e).__name__}: {one_line(e)}")
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
        epochs = [r for r in self.run.records() if r.get("kind") == "epoch"]
        steps = [r["step"] for r in self.run.records() if isinstance(r.get("step"), int)]
        out: dict[str, float] = {}
        if epochs:
            last = epochs[-1]
            for k in (*monitors(), "train_loss"):  # every metric of the table, as logged
                if isinstance(last.get(k), (int, float)):
                    out[f"hparam/{k}"] = float(last[k])
            monitor = self.cfg.train.monitor
            values = [r[monitor] for r in epochs if isinstance(r.get(monitor), (int, float))]
            if values:
                out[f"hparam/best_{monitor}"] = float(values[best_of(monitor, values)])
            out["hparam/epochs"] = float(last.get("epoch", len(epochs)))
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
            log.warning(f"could not complete {self.run.path / 'manifest.json'}: {e}")
        if not self.backends:
            return
        metrics, step = self.final_metrics()
        end = Ending(status, metrics, step, [p for p in (self.run.path / a for a in ARTIFACTS) if p.exists()])
        self._each(lambda b: b.finish(end))
        self._each(lambda b: b.close())
        self.backends = []
