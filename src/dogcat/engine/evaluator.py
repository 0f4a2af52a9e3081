"""``evaluate`` (val), ``report`` and ``test`` (the Kaggle submission) of a run folder or checkpoint file."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..data import BadFiles, DataError, build_test, build_train_val, class_counts, make_loader, targets
from ..data.multilabel import label_counts
from ..io import atomic_write_text
from ..metrics import per_class_named
from ..models.calibration import probabilities, with_temperature
from ..models.tta import with_tta
from ..models.gradcam import explainer
from ..tracking.collect import Collector
from ..tracking.folder import RunFolder
from ..tracking.report import write_report
from .trained import Loaded, load_model
from .loop import validate
from .meters import EvalMeter, MultiLabelMeter, eval_meter
from .submission import check_submission, sample_order, write_submission

log = logging.getLogger("dogcat")


def evaluate(target: str | Path | None, overrides: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Validation metrics of a trained model on its own validation split; writes ``result.json``.
    ``overrides`` / ``options``: config options, e.g. ``evaluate(run, tta=True, batch_size=64)``."""
    lm = load_model(target, {**(overrides or {}), **options})
    pre = lm.pre  # the checkpoint's: the validation images get the model's own eval resize, crop and statistics
    data = build_train_val(lm.cfg.data, model_input={"mean": pre.mean, "std": pre.std,
                                                     "interpolation": pre.interpolation, "crop_pct": pre.crop_pct})
    names = list(lm.pre.classes)
    if data.val is None:
        raise DataError("no validation set: set --val-split > 0 or --val-data-root / --val-list")
    if list(data.pre.classes) != names:
        raise DataError(f"the data's classes {list(data.pre.classes)} differ from the model's {names}")
    loader = make_loader(data.val, batch_size=lm.cfg.data.batch_size, num_workers=lm.cfg.data.num_workers,
                         shuffle=False, seed=lm.cfg.train.seed)
    multilabel = lm.pre.multilabel  # its thresholds are chosen on this pass again, as in training
    t = lm.applied_temperature  # softmax(output / T): the one rule (models/calibration.py); a multi-label run's is 1
    # the report's worst mistakes and reliability diagram (raw and calibrated); a multi-label report has its tables
    collect = Collector(len(names), temperature=t) if lm.cfg.eval.report and not multilabel else None
    metrics = validate(with_temperature(with_tta(lm.model, lm.cfg.eval.tta, multilabel), t), loader, lm.runtime,
                       len(names), BadFiles(None), lm.cfg.train.progress, lm.cfg.train.print_freq, collect,
                       eval_meter(names, multilabel))
    result = {"checkpoint": str(lm.checkpoint), **lm.meta, "class_names": names, "temperature": t, **metrics}
    if not multilabel:
        result["per_class"] = per_class_named(metrics["confusion"], names)
    if lm.cfg.eval.report:
        counts = label_counts(targets(data.train), len(names)) if multilabel else class_counts(data.train, len(names))
        result["report"] = str(write_report(lm.out_dir, lm.run_dir, metrics, collect, names, lm.pre.mean,
                                            lm.pre.std, str(lm.checkpoint), explainer(lm.model), counts,
                                            lm.temperature))
        log.info(f"wrote {result['report']}")
    out = RunFolder(lm.out_dir).result
    atomic_write_text(out, json.dumps(result, indent=2, default=str))
    log.info(f"wrote {out}")
    return result


def report(target: str | Path, overrides: dict[str, Any] | None = None, **options: Any) -> Path:
    """``dogcat report RUN``: a validation pass with the report on; a run without a validation set or a
    checkpoint (killed in its first epoch) still gets its curves, config and manifest."""
    try:
        return Path(evaluate(target, {**(overrides or {}), **options, "report": True})["report"])
    except (DataError, ConfigError) as e:
        run = Path(target)
        if not RunFolder(run).is_run():
            raise
        log.warning(f"no validation pass for the report: {e}")
        return write_report(run, run)


@torch.no_grad()
def _probabilities(lm: Loaded, dataset: Any, bad: BadFiles) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """ids, class probabilities (N, C) and labels (-1 unknown) over a dataset, in its order."""
    ids, probs, labels = [], [], []
    for batch_ids, logits, y in lm.outputs(dataset, bad, with_tta(lm.model, lm.cfg.eval.tta, lm.pre.multilabel)):
        ids += batch_ids
        probs.append(probabilities(logits, lm.applied_temperature, lm.pre.multilabel).cpu())  # T = 1: not calibrated
        labels.append(y)
    c = len(lm.pre.classes)
    return ids, torch.cat(probs) if probs else torch.empty(0, c), torch.cat(labels) if labels else torch.empty(0)


def positive_index(class_names: list[str], positive: str | None) -> int:
    """The class whose probability a 2-class submission holds: ``--positive-class``, else dog, else class 1."""
    name = positive or ("dog" if "dog" in class_names else class_names[1])
    if name not in class_names:
        raise ConfigError(f"--positive-class={name!r} is not one of the classes {class_names}")
    return class_names.index(name)


def _id_key(i: str) -> tuple:
    return (0, int(i), "") if re.fullmatch(r"\d+", i) else (1, 0, i)


def test(target: str | Path | None, overrides: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Write the submission CSV: ``id,label`` with label = probability of the positive class (2 classes),
    or the predicted class name plus one probability column per class. Rows sorted by (numeric) id.
    An unreadable test image still gets a row (probability 0.5 / uniform) and is reported.
    ``overrides`` / ``options``: config options, e.g. ``test(run, test_data_root="data/test1")``."""
    lm = load_model(target, {**(overrides or {}), **options})
    # the training layout decides the test layout; a bare state_dict has none: test_list or test_data_root
    dataset = build_test(lm.cfg.data, lm.layout, lm.pre)
    bad = BadFiles(RunFolder(lm.out_dir).bad_test_files)  # its own list: training's must not become rows
    ids, probs, labels = _probabilities(lm, dataset, bad)
    names = list(lm.pre.classes)
    c = len(names)
    rows = {i: p for i, p in zip(ids, probs.tolist())}
    multilabel = lm.pre.multilabel
    for path in bad.files:  # one row per test image, even for a file we could not read (multi-label: no label)
        rows.setdefault(_bad_id(path, lm.cfg.data.test_data_root), [0.0 if multilabel else 1.0 / c] * c)
    out = Path(lm.cfg.eval.result_file) if lm.cfg.eval.result_file else RunFolder(lm.out_dir).submission
    ev = lm.cfg.eval
    pos = positive_index(names, ev.positive_class) if c == 2 and not multilabel else None
    order = sample_order(ev.sample_submission, sorted(rows, key=_id_key))
    write_submission(out, rows, names, pos, order, ev.clip_probs, lm.pre.cutoffs if multilabel else None)
    expected = getattr(dataset, "ids", None) or [str(i) for i in getattr(dataset, "index", [])]
    check_submission(out, expected, ev.sample_submission)  # before anyone uploads it; exits 2 when wrong
    result: dict[str, Any] = {"submission": str(out), "rows": len(rows), "checkpoint": str(lm.checkpoint),
                              "class_names": names, "temperature": lm.applied_temperature}
    known = labels >= 0
    if len(labels) and bool(known.all()) and multilabel:  # scored at the model's own thresholds
        meter = MultiLabelMeter(names, lm.pre.cutoffs)
        meter.update(torch.logit(probs.double(), eps=1e-15), labels.long())
        result["metrics"] = meter.compute()
        atomic_write_text(RunFolder(lm.out_dir).test_result, json.dumps(result, indent=2, default=str))
    elif len(labels) and bool(known.all()):  # a labelled test set (Fashion-MNIST, class folders): score it too
        meter = EvalMeter(c)
        meter.update(probs.clamp_min(1e-30).log(), labels.long())
        result["metrics"] = meter.compute()
        result["per_class"] = per_class_named(result["metrics"]["confusion"], names)
        atomic_write_text(RunFolder(lm.out_dir).test_result, json.dumps(result, indent=2, default=str))
    log.info(f"wrote {len(rows)} rows to {out}")
    return result


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def _bad_id(path: str, root: str | None) -> str:
    p = Path(path)
    if re.fullmatch(r"\d+", p.stem):
        return p.stem
    try:
        return str(p.relative_to(root).with_suffix("")) if root else p.stem
    except ValueError:
        return p.stem
