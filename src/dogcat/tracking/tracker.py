"""Experiment memory of a training run: manifest.json and TensorBoard, driven by a few trainer hooks.

The trainer calls ``Tracker.start`` (before anything runs), ``setup`` (data and model built),
``collector`` / ``epoch_end`` (each validation) and, through ``Run.set_status``, ``finish``; every
metrics.jsonl record reaches TensorBoard through ``Run.log``. Only rank 0 tracks.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import NOT_EXPERIMENT, Config, flat_config, to_dict
from ..data import DataBundle, SeededItems
from ..metrics import best_of, monitors
from ..preprocess import Preprocess
from .collect import Collector
from .manifest import Manifest, data_fingerprint

if TYPE_CHECKING:
    from .run import Run
    from .tensorboard import TBLogger

log = logging.getLogger("dogcat")

GRID_IMAGES = 16


def is_main_process() -> bool:
    """Rank 0 of a distributed job, or a plain process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def sample_inputs(dataset: Any, seed: int, n: int = GRID_IMAGES) -> list[torch.Tensor]:
    """``n`` augmented training images spread over the data set. Each is drawn the way training draws it
    (``SeededItems``: its own seeded generator), so the global RNG, and exact resume, are untouched."""
    size = len(dataset)
    items = SeededItems(dataset)
    out = []
    for k in range(min(n, size)):
        i = k * size // min(n, size)
        item = items[(i, seed * 1_000_003 + i)]
        if item.image is not None:
            out.append(item.image)
    return out


class Tracker:
    """manifest.json + TensorBoard for one run; a TensorBoard failure warns and switches TensorBoard off."""

    def __init__(self, run: Run, cfg: Config, resume_step: int | None) -> None:
        self.run, self.cfg, self.resume_step = run, cfg, resume_step
        self.manifest = Manifest(run.path)
        self.tb: TBLogger | None = None
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
        """Data and model are built: fingerprint the data, open TensorBoard, show augmented inputs."""
        self.pre = bundle.pre
        splits = sorted(str(x.relative_to(self.run.path)) for x in (self.run.path / "splits").glob("*.csv"))
        try:
            data = data_fingerprint(bundle, self.cfg)
        except Exception as e:  # noqa: BLE001  # a record of the data must not stop the training on it
            data = {"kind": bundle.layout, "error": f"{type(e).__name__}: {e}"}
        self.manifest.update(device=device, data=data, splits=splits)
        self._tb(lambda: self._open(bundle))

    def _open(self, bundle: DataBundle) -> None:
        from .tensorboard import TBLogger

        # purge from the step after the checkpoint: that step's records were logged before it was saved
        purge = self.resume_step + 1 if self.resume_step is not None else None
        self.tb = TBLogger(self.run.path, purge)
        if self.resume_step is None:
            self.tb.text("config", "```\n" + (self.run.path / "config.yaml").read_text() + "\n```")
            if bundle.train is not None:
                images = sample_inputs(bundle.train, self.cfg.train.seed)
                if images and images[0].dtype == torch.uint8 and bundle.batch_transform is not None:
                    # a uint8 path: its augmentation (crop, flip, a preset) runs per batch, seeded by the batch
                    images = list(bundle.batch_transform(torch.stack(images), self.cfg.train.seed).clone())
                self.tb.input_grid(images, bundle.pre.mean, bundle.pre.std)

    def _tb(self, fn: Callable[[], None]) -> None:
        """Run a TensorBoard call; a failure (disk full, a plugin error) must not end the training."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"TensorBoard logging switched off: {type(e).__name__}: {e}")
            if self.tb is not None:
                try:
                    self.tb.close()
                except Exception:  # noqa: BLE001
                    pass
            self.tb = None

    def model_graph(self, model: torch.nn.Module, device: torch.device | str) -> None:
        """The model graph, once per run (not again on resume); a model that cannot be traced is logged."""
        if self.tb is None or self.pre is None or self.resume_step is not None:
            return
        tb, pre = self.tb, self.pre
        example = torch.zeros(1, pre.in_chans, pre.size, pre.size, device=device)

        def write() -> None:
            reason = tb.graph(model, example)
            if reason:
                log.info(f"TensorBoard model graph skipped: {reason}")
                tb.text("graph", f"model graph skipped: {reason}")
        self._tb(write)

    def embeddings(self, step: int, model: torch.nn.Module, dataset: Any, device: torch.device | str,
                   batch_size: int) -> None:
        """Penultimate features of up to 1,000 validation images for TensorBoard's projector."""
        if self.tb is None or self.pre is None or dataset is None:
            return
        from .embeddings import penultimate

        tb, pre = self.tb, self.pre

        def write() -> None:
            try:
                got = penultimate(model, dataset, device, pre.mean, pre.std, batch_size)
            except Exception as e:  # noqa: BLE001  # the model's failure, not TensorBoard's: keep logging
                log.warning(f"TensorBoard embeddings skipped: {type(e).__name__}: {e}")
                return
            if got is None:
                log.info("TensorBoard embeddings skipped: the model has no classifier head to take features from")
                return
            tb.embeddings(step, *got, list(pre.classes))
        self._tb(write)

    def log_record(self, record: dict[str, Any]) -> None:
        if self.tb is not None:
            tb = self.tb
            self._tb(lambda: tb.log_record(record))

    def collector(self) -> Collector:
        assert self.pre is not None, "setup() first"
        return Collector(len(self.pre.classes), keep_images=GRID_IMAGES)

    def epoch_end(self, step: int, val_stats: dict[str, Any], collect: Collector | None) -> None:
        if self.tb is not None and val_stats and self.pre is not None:
            tb, pre = self.tb, self.pre
            self._tb(lambda: tb.validation(step, val_stats, collect, list(pre.classes), pre.mean, pre.std))

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
        """Complete the manifest (end time, exit status), write the hparams session, close TensorBoard."""
        if self.done:
            return
        self.done = True
        try:
            self.manifest.finish(status, error)
        except Exception as e:  # noqa: BLE001  # never hide the error that ended the run
            log.warning(f"could not complete {self.run.path / 'manifest.json'}: {e}")
        if self.tb is not None:
            tb = self.tb
            tree = {sec: v for sec, v in to_dict(self.cfg).items() if sec != "eval"}  # eval options: not training's
            flat = {k: v for k, v in flat_config(tree).items() if k not in NOT_EXPERIMENT}
            from .tensorboard import hparam_values

            metrics, step = self.final_metrics()
            self._tb(lambda: tb.hparams(hparam_values(flat), metrics, step, status))
            self._tb(tb.close)
            self.tb = None
