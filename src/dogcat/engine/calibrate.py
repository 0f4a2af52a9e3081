"""``dogcat calibrate RUN``: fit a temperature on the run's own validation split and store it in the checkpoint.

One validation pass collects the raw logits (no TTA: T is a property of the network's logits; with ``--tta``
the readers divide the log of the averaged probabilities by the same T), :func:`fit_temperature` minimises their
NLL, and the result goes to two places:

- the checkpoint, under a new key ``calibration`` (the temperature, how many images it was fitted on, NLL and
  ECE before and after), rewritten atomically; a checkpoint without the key means T = 1. It stays plain data
  (``weights_only`` loads) and a resume from it is exact: the training never reads the key, and the next save
  (new weights) has none, so a T is never applied to weights it was not fitted on;
- the run's record: a ``calibrate`` event in ``metrics.jsonl`` with the same numbers and the checkpoint's name.

The run folder's lock is held meanwhile: a run that is training (and rewrites its checkpoints) is refused, and
no training can start on it while its checkpoint is rewritten. Single-label runs only: a multi-label model
(independent sigmoids) would need one temperature per label and is refused in one line.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..data import BadFiles, DataError, build_train_val
from ..metrics import ECE_BINS, ece
from ..models.calibration import fit_temperature, nll, reliability_bins
from ..models.weights import torch_load
from ..tracking.records import event_record
from ..tracking.run import Run
from .checkpoint import store_calibration
from .trained import Loaded, load_model, resolve_checkpoint

log = logging.getLogger("dogcat")


@dataclass
class Calibration:
    """What ``dogcat calibrate`` fitted and measured, on the validation split of the checkpoint's run."""

    checkpoint: str
    temperature: float
    previous_temperature: float  # what the checkpoint held before (1.0: none)
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    ece_bins: int = ECE_BINS

    def stored(self) -> dict[str, Any]:
        """The checkpoint's ``calibration`` entry (and the metrics.jsonl event's fields)."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint", "previous_temperature")} | {
            "method": "temperature", "fitted_on": "validation split"}


@torch.no_grad()
def validation_logits(lm: Loaded, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) float64 logits of the raw model (no TTA, no temperature) and (N,) labels over a labelled set."""
    logits, labels = [], []
    for _, out, y in lm.outputs(dataset, BadFiles(None)):  # unreadable images: warned about, left out
        logits.append(out.double().cpu())
        labels.append(y.long().cpu())
    if not logits:
        raise DataError("the validation set has no readable image to calibrate on")
    return torch.cat(logits), torch.cat(labels)


def _ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return ece(reliability_bins((logits / temperature).softmax(1), labels).tolist())


def measure(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Calibration:
    """NLL and ECE of the raw softmax and of ``softmax(logits / temperature)`` (checkpoint fields left empty)."""
    return Calibration("", temperature, 1.0, len(labels), nll(logits, labels), nll(logits, labels, temperature),
                       _ece(logits, labels, 1.0), _ece(logits, labels, temperature))


def calibrate(target: str | Path | None, overrides: dict[str, Any] | None = None, **options: Any) -> Calibration:
    """Fit the temperature of a run's checkpoint (``checkpoint="best"|"last"``, or a checkpoint file) on its
    validation split, store it in the checkpoint and log it to the run. ``overrides`` / ``options``: config
    options, as for :func:`dogcat.evaluate`."""
    ov = {**(overrides or {}), **options}
    path, run_dir = resolve_checkpoint(target, ov)  # a missing run or file: one line, nothing locked yet
    run = Run(run_dir).lock() if run_dir is not None else None  # a run that is training: refused, naming it
    try:
        lm = load_model(path, ov)
        if not lm.dogcat_checkpoint:
            raise ConfigError(f"{path} is a bare state_dict, not a dogcat checkpoint: it has no validation split "
                              "and no place for a temperature. Train (or fine-tune) it with dogcat, then calibrate "
                              "the run")
        if lm.pre.multilabel:  # independent sigmoids: one temperature per label, which this does not fit
            raise ConfigError(f"{path} is a multi-label model: calibrate fits one softmax temperature, for "
                              "single-label runs; a multi-label model's thresholds are already chosen on validation")
        data = build_train_val(lm.cfg.data)
        names = list(lm.pre.classes)
        if data.val is None:
            raise DataError(f"{path}'s run has no validation set to fit a temperature on: calibrate needs held-out "
                            "images (train with --val-split > 0, or pass --val-data-root / --val-list here)")
        if list(data.pre.classes) != names:
            raise DataError(f"the data's classes {list(data.pre.classes)} differ from the model's {names}")
        logits, labels = validation_logits(lm, data.val)
        result = measure(logits, labels, fit_temperature(logits, labels))
        result.checkpoint, result.previous_temperature = str(path), lm.temperature
        if bool((logits.argmax(1) == labels).all()):
            log.warning(f"every one of the {len(labels)} validation images is classified correctly: the NLL keeps "
                        f"falling as T shrinks, so T = {result.temperature:.3g} says little; a larger validation "
                        "set (--val-split) gives a temperature that means more")
        raw = torch_load(path)  # as written (its own format version), not the upgraded copy load_model read
        store_calibration(path, raw, result.stored())
        if run is not None:
            run.log(event_record("calibrate", checkpoint=path.name, global_step=lm.meta.get("global_step"),
                                 **result.stored()))
        log.info(f"temperature {result.temperature:.4f} fitted on {result.images} validation images; stored in {path}")
        return result
    finally:
        if run is not None:
            run.unlock()
