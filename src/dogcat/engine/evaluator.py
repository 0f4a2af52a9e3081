"""``evaluate`` (val), ``test`` (Kaggle submission) and ``predict`` on a run folder or checkpoint file."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, ConfigError, from_dict, load_config
from ..data import KINDS, BadFiles, DataError, build_test, build_train_val, make_loader
from ..io import atomic_write_text
from ..inference import with_tta
from ..models import build_model, head_module, list_models
from ..models.weights import WeightsError, load_weights, read_state_dict, torch_load
from .checkpoint import check_checkpoint
from .metrics import EvalMeter
from .runtime import autocast, memory_format, pick_device
from .submission import check_submission, sample_order, write_submission
from ..tracking.collect import Collector
from .loop import Loop, validate

log = logging.getLogger("dogcat")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Loaded:
    """A model ready for inference and what is known about its training."""

    model: nn.Module
    cfg: Config
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str | None
    checkpoint: Path
    run_dir: Path | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.run_dir or self.checkpoint.parent


def resolve_checkpoint(target: str | Path | None, overrides: dict[str, Any]) -> tuple[Path, Path | None]:
    """``(checkpoint file, run folder or None)`` for a run folder, a file, or ``--load-model-path``."""
    spec = target or next((v for k, v in overrides.items() if k.replace("-", "_") == "load_model_path"), None)
    if not spec:
        raise ConfigError("name a run folder or checkpoint (dogcat val RUN) or pass --load-model-path=FILE")
    path = Path(str(spec))
    if path.is_dir():
        which = str(next((v for k, v in overrides.items() if k.replace("-", "_") == "checkpoint"), "best"))
        ckpt = path / "checkpoints" / f"{which}.pt"
        if not ckpt.is_file() and which == "best" and (path / "checkpoints" / "last.pt").is_file():
            ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise ConfigError(f"{path} has no checkpoints/{which}.pt: is it a dogcat run folder that finished an epoch?")
        return ckpt, path
    if not path.is_file():
        raise ConfigError(f"no run folder or checkpoint file at {path}")
    run = path.parent.parent if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists() \
        else None
    return path, run


def load_model(target: str | Path | None, overrides: dict[str, Any] | None = None) -> Loaded:
    """Rebuild the trained model. A dogcat checkpoint carries its config and classes; a bare state_dict
    (the seed's ``BasicModule.save``) needs ``--model`` and takes its class count from the head's shape."""
    overrides = dict(overrides or {})
    ckpt_path, run_dir = resolve_checkpoint(target, overrides)
    obj = torch_load(ckpt_path) if ckpt_path.suffix != ".safetensors" else {}
    if isinstance(obj, dict) and "format_version" in obj:  # data from elsewhere: checked, output places not taken
        check_checkpoint(obj, ckpt_path)
        base = from_dict(obj["config"], f"the config stored in {ckpt_path}")
        base.train.resume = None
        cfg = load_config(overrides, base=base)
        cfg.model.model = base.model.model  # the architecture is the checkpoint's, whatever --model says
        names, chans = list(obj["class_names"]), int(obj["in_chans"])
        mean, std, kind = tuple(obj["mean"]), tuple(obj["std"]), obj.get("data_kind")
        kind = kind if kind in KINDS else None
        model = build_model(cfg.model.model, len(names), chans)
        load_weights(model, obj.get("ema") or obj["model"], strict=True, source=str(ckpt_path))  # EMA first
        if cfg.train.precision == "auto":  # the training's probed choice, on the same kind of device
            same = obj.get("device_type") == pick_device(cfg.train).type
            stored = obj.get("precision")
            cfg.train.precision = stored if same and stored in ("fp32", "bf16", "fp16") else "fp32"
        meta = {k: obj.get(k) for k in ("epoch", "global_step", "best_metric", "best_epoch", "monitor")}
    else:
        cfg = load_config(overrides)
        sd, _ = read_state_dict(ckpt_path)
        names, chans = _infer_classes(cfg.model.model, sd)
        mean, std = IMAGENET if chans == 3 else ((0.5,) * chans, (0.5,) * chans)
        model = build_model(cfg.model.model, len(names), chans)
        try:
            load_weights(model, sd, strict=not cfg.model.load_not_strict, source=str(ckpt_path))
        except WeightsError as e:
            raise WeightsError(_architecture_hint(ckpt_path, cfg.model.model, sd, e)) from None
        kind, meta = None, {}
    device = pick_device(cfg.train)
    model.to(device, memory_format=memory_format(cfg.train.channels_last)).eval()
    return Loaded(model, cfg, names, chans, mean, std, kind, ckpt_path, run_dir, meta)


def _infer_classes(model_name: str, sd: dict[str, torch.Tensor]) -> tuple[list[str], int]:
    probe = build_model(model_name, 2, 3)
    head = head_module(probe)
    head_keys = {k for k, v in probe.state_dict().items()
                 if head is not None and any(v is p for p in head.state_dict().values())}
    weights = [v for k, v in sd.items() if k.split("module.")[-1] in head_keys and v.ndim >= 2]
    n = int(weights[-1].shape[0]) if weights else 2
    chans = next((int(v.shape[1]) for v in sd.values() if v.ndim == 4), 3)
    return (["cat", "dog"] if n == 2 else [str(i) for i in range(n)]), chans


def _architecture_hint(path: Path, model_name: str, sd: dict[str, torch.Tensor], err: Exception) -> str:
    """Say which registered architecture a bare state_dict belongs to, when --model names another one."""
    for name in list_models():
        if name == model_name.lower():
            continue
        try:
            names, chans = _infer_classes(name, sd)
            probe = build_model(name, len(names), chans).state_dict()
        except Exception:  # a builder that cannot take this class / channel count is not it
            continue
        ours = {k.split("module.")[-1]: tuple(v.shape) for k, v in sd.items()}
        if ours == {k: tuple(v.shape) for k, v in probe.items()}:
            return (f"{path} holds {name} weights, not {model_name} ones: pass --model={name} "
                    f"(a bare state_dict does not record its architecture)")
    return (f"{path} does not fit --model={model_name} ({err}). It matches none of the registered models "
            f"({', '.join(list_models())}); pass the --model it was trained with (timm:<name> and "
            f"torchvision:<name> work too), or --load-not-strict to load the matching part")


def _loop(lm: Loaded, bad: BadFiles) -> Loop:
    return Loop(device=next(lm.model.parameters()).device, precision=lm.cfg.train.precision,
                channels_last=lm.cfg.train.channels_last, bad=bad, print_freq=lm.cfg.train.print_freq,
                progress=lm.cfg.train.progress)


def evaluate(target: str | Path | None, overrides: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Validation metrics of a trained model on its own validation split; writes ``result.json``.
    ``overrides`` / ``options``: config options, e.g. ``evaluate(run, tta=True, batch_size=64)``."""
    lm = load_model(target, {**(overrides or {}), **options})
    data = build_train_val(lm.cfg.data)
    if data.val is None:
        raise DataError("no validation set: set --val-split > 0 or --val-data-root / --val-list")
    if data.class_names != lm.class_names:
        raise DataError(f"the data's classes {data.class_names} differ from the model's {lm.class_names}")
    loader = make_loader(data.val, batch_size=lm.cfg.data.batch_size, num_workers=lm.cfg.data.num_workers,
                         shuffle=False, seed=lm.cfg.train.seed)
    collect = Collector(len(lm.class_names)) if lm.cfg.eval.report else None  # the report's worst mistakes
    metrics = validate(with_tta(lm.model, lm.cfg.eval.tta), loader, _loop(lm, BadFiles(None)), len(lm.class_names),
                       collect)
    result = {"checkpoint": str(lm.checkpoint), **lm.meta, "class_names": lm.class_names, **metrics}
    if collect is not None:
        from ..tracking.report import write_report
        result["report"] = str(write_report(lm.out_dir, lm.run_dir, metrics, collect, lm.class_names, lm.mean,
                                            lm.std, str(lm.checkpoint)))
        log.info(f"wrote {result['report']}")
    atomic_write_text(lm.out_dir / "result.json", json.dumps(result, indent=2, default=str))
    log.debug(f"val: loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}, "
              f"logloss {metrics['logloss']:.4f} on {metrics['count']} images")  # the result itself: the caller's
    log.info(f"wrote {lm.out_dir / 'result.json'}")
    return result


@torch.no_grad()
def _probabilities(lm: Loaded, dataset: Any, bad: BadFiles) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """ids, class probabilities (N, C) and labels (-1 unknown) over a dataset, in its order."""
    loader = make_loader(dataset, batch_size=lm.cfg.data.batch_size, num_workers=lm.cfg.data.num_workers,
                         shuffle=False, seed=lm.cfg.train.seed)
    loop = _loop(lm, bad)
    model = with_tta(lm.model, lm.cfg.eval.tta)
    ids, probs, labels = [], [], []
    for batch in loader:
        bad.add(batch.bad)
        if not len(batch.labels):
            continue
        images, _ = loop.to_device(batch.images, batch.labels)
        with autocast(loop.device, loop.precision):
            logits = model(images)
        ids += batch.ids
        probs.append(logits.float().softmax(1).cpu())
        labels.append(batch.labels)
    c = len(lm.class_names)
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
    # the training layout decides the test layout; a bare state_dict has none, so the folder (or list) decides
    kind = lm.kind or ("list" if lm.cfg.data.test_list else "folder")
    dataset = build_test(lm.cfg.data, kind, lm.class_names, lm.in_chans, lm.mean, lm.std)
    bad = BadFiles(lm.out_dir / "bad_files_test.txt")  # its own list: training's must not become rows
    ids, probs, labels = _probabilities(lm, dataset, bad)
    c = len(lm.class_names)
    rows = {i: p for i, p in zip(ids, probs.tolist())}
    for path in bad.files:  # one row per test image, even for a file we could not read
        rows.setdefault(_bad_id(path, lm.cfg.data.test_data_root), [1.0 / c] * c)
    out = Path(lm.cfg.eval.result_file) if lm.cfg.eval.result_file else lm.out_dir / "submission.csv"
    ev = lm.cfg.eval
    pos = positive_index(lm.class_names, ev.positive_class) if c == 2 else None
    order = sample_order(ev.sample_submission, sorted(rows, key=_id_key))
    write_submission(out, rows, lm.class_names, pos, order, ev.clip_probs)
    expected = getattr(dataset, "ids", None) or [str(i) for i in getattr(dataset, "index", [])]
    check_submission(out, expected, ev.sample_submission)  # before anyone uploads it; exits 2 when wrong
    result: dict[str, Any] = {"submission": str(out), "rows": len(rows), "checkpoint": str(lm.checkpoint),
                              "class_names": lm.class_names}
    known = labels >= 0
    if len(labels) and bool(known.all()):  # a labelled test set (Fashion-MNIST, class folders): score it too
        meter = EvalMeter(c)
        meter.update(probs.clamp_min(1e-30).log(), labels.long())
        result["metrics"] = meter.compute()
        m = result["metrics"]
        log.debug(f"test: accuracy {m['accuracy']:.4f}, logloss {m['logloss']:.4f} on {m['count']} images")
        atomic_write_text(lm.out_dir / "test_result.json", json.dumps(result, indent=2, default=str))
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


def predict(target: str | Path | None, paths: list[str] | str, overrides: dict[str, Any] | None = None,
            trust: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Class and probabilities for image files, folders or globs, in order; unreadable files come back with an
    error. ``target``: a run folder, a checkpoint, or an exported model with its sidecar (see ``dogcat.load``;
    ``trust``: allow a TorchScript export, which runs code); ``overrides`` / ``options``: config options, e.g.
    ``predict(run, ["a.jpg"], tta=True)``."""
    from ..inference import load

    clf = load(target, {**(overrides or {}), **options}, trust)
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    return clf.predict(paths, tta=clf.cfg.eval.tta, batch_size=clf.cfg.data.batch_size)
