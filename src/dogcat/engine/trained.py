"""Loading a trained model for inference (:func:`load_model`): a run folder, a dogcat checkpoint, or a bare
state_dict (the template's ``model.save()`` output). Evaluation, prediction and export all start here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ..config import Config, ConfigError, from_dict, load_config
from ..data import BadFiles, layout_names, make_loader
from ..models import build_model, head_module, list_models
from ..models.weights import WeightsError, load_weights, read_state_dict, torch_load
from ..preprocess import Preprocess
from ..tracking.folder import RunFolder
from .checkpoint import check_checkpoint, checkpoint_preprocess, checkpoint_temperature
from .given import CUSTOM
from .runtime import Runtime, memory_format, pick_device


@dataclass
class Loaded:
    """A model ready for inference and what is known about its training."""

    model: nn.Module
    cfg: Config
    pre: Preprocess
    layout: str | None  # the training data's layout (None: unknown, a bare state_dict)
    checkpoint: Path
    run_dir: Path | None
    meta: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0  # what `dogcat calibrate` stored in the checkpoint (1.0: none)
    dogcat_checkpoint: bool = False  # False for a bare state_dict (the seed's model.save()) or safetensors

    @property
    def applied_temperature(self) -> float:
        """The T that val / test / predict divide the logits by: the stored one, 1.0 with --no-calibration."""
        return self.temperature if self.cfg.eval.calibration else 1.0

    @property
    def out_dir(self) -> Path:
        """Where val / test write their results: the run folder, else the checkpoint's folder."""
        return self.run_dir or self.checkpoint.parent

    @property
    def runtime(self) -> Runtime:
        return Runtime(next(self.model.parameters()).device, self.cfg.train.precision, self.cfg.train.channels_last)

    @torch.no_grad()
    def outputs(self, dataset: Any, bad: BadFiles, model: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
        """``(ids, outputs, labels)`` batch by batch over ``dataset`` in its order, from ``model`` (this one, or a
        wrapper of it such as flip TTA) under the run's autocast; unreadable images go to ``bad``, left out."""
        loader = make_loader(dataset, batch_size=self.cfg.data.batch_size, num_workers=self.cfg.data.num_workers,
                             shuffle=False, seed=self.cfg.train.seed)
        rt, model = self.runtime, model or self.model
        for batch in loader:
            bad.add(batch.bad)
            if not len(batch.labels):
                continue
            images, _ = rt.to_device(batch.images, batch.labels)
            with rt.autocast():
                out = model(images)
            yield batch.ids, out, batch.labels


def resolve_checkpoint(target: str | Path | None, overrides: dict[str, Any]) -> tuple[Path, Path | None]:
    """``(checkpoint file, run folder or None)`` for a run folder, a file, or ``--load-model-path``."""
    spec = target or next((v for k, v in overrides.items() if k.replace("-", "_") == "load_model_path"), None)
    if not spec:
        raise ConfigError("name a run folder or checkpoint (dogcat val RUN) or pass --load-model-path=FILE")
    path = Path(str(spec))
    if path.is_dir():
        which = str(next((v for k, v in overrides.items() if k.replace("-", "_") == "checkpoint"), "best"))
        run = RunFolder(path)
        ckpt = run.checkpoint(which)
        if not ckpt.is_file() and which == "best" and run.checkpoint("last").is_file():
            ckpt = run.checkpoint("last")
        if not ckpt.is_file():
            raise ConfigError(f"{path} has no {ckpt.relative_to(path)}: is it a dogcat run folder that finished an "
                              "epoch?")
        return ckpt, path
    if not path.is_file():
        raise ConfigError(f"no run folder or checkpoint file at {path}")
    run = RunFolder(path.parent.parent)  # RUN/checkpoints/NAME.pt: the run it belongs to, when it is one
    return path, run.path if path.parent == run.checkpoints and run.config.exists() else None


def load_model(target: str | Path | None, overrides: dict[str, Any] | None = None,
               module: nn.Module | None = None) -> Loaded:
    """Rebuild the trained model. A dogcat checkpoint carries its config and classes; a bare state_dict
    (the template's ``BasicModule.save``) needs ``--model`` and takes its class count from the head's shape.
    ``module``: load the weights into this module instead of building one by name; a run of a user's own
    module (``model: custom:...``) needs it, since nothing named in a checkpoint is imported (engine/given.py)."""
    overrides = dict(overrides or {})
    ckpt_path, run_dir = resolve_checkpoint(target, overrides)
    obj = torch_load(ckpt_path) if ckpt_path.suffix != ".safetensors" else {}
    if isinstance(obj, dict) and "format_version" in obj:  # data from elsewhere: checked, output places not taken
        obj = check_checkpoint(obj, ckpt_path)  # in the current layout, whatever format it was written in
        base = from_dict(obj["config"], f"the config stored in {ckpt_path}")
        base.train.resume = None
        cfg = load_config(overrides, base=base)
        cfg.model.model = base.model.model  # the architecture is the checkpoint's, whatever --model says
        pre = dataclasses.replace(checkpoint_preprocess(obj, ckpt_path), size=cfg.data.image_size)
        layout = obj.get("layout", obj.get("data_kind"))  # "data_kind": its older name, in older checkpoints
        layout = layout if layout in layout_names() else None
        model = module if module is not None else _build(cfg.model.model, len(pre.classes), pre.in_chans, ckpt_path)
        load_weights(model, obj.get("ema") or obj["model"], strict=True, source=str(ckpt_path))  # EMA first
        if cfg.train.precision == "auto":  # the training's probed choice, on the same kind of device
            same = obj.get("device_type") == pick_device(cfg.train).type
            stored = obj.get("precision")
            cfg.train.precision = stored if same and stored in ("fp32", "bf16", "fp16") else "fp32"
        meta = {**{k: obj["state"].get(k) for k in ("epoch", "global_step", "best_metric", "best_epoch")},
                "monitor": obj.get("monitor")}
        temperature, dogcat_checkpoint = checkpoint_temperature(obj), True
    else:
        cfg = load_config(overrides)
        sd, _ = read_state_dict(ckpt_path)
        names, chans = _infer_classes(cfg.model.model, sd)
        pre = Preprocess.default(names, chans, cfg.data.image_size)
        model = module if module is not None else build_model(cfg.model.model, len(names), chans)
        try:
            load_weights(model, sd, strict=not cfg.model.load_not_strict, source=str(ckpt_path))
        except WeightsError as e:
            raise WeightsError(_architecture_hint(ckpt_path, cfg.model.model, sd, e)) from None
        layout, meta, temperature, dogcat_checkpoint = None, {}, 1.0, False
    device = pick_device(cfg.train)
    model.to(device, memory_format=memory_format(cfg.train.channels_last)).eval()
    return Loaded(model, cfg, pre, layout, ckpt_path, run_dir, meta, temperature, dogcat_checkpoint)


def _build(name: str, num_classes: int, in_chans: int, path: Path) -> nn.Module:
    """The registered model a checkpoint names; a user's own module (``custom:``) is one line asking for it."""
    if name.startswith(CUSTOM):
        cls = name[len(CUSTOM):]
        raise ConfigError(f"{path} holds the weights of your own module {cls}, which a checkpoint cannot rebuild "
                          f"(nothing named in it is imported): in Python pass the module again, "
                          f"dogcat.load(RUN, model={cls.rsplit('.', 1)[-1]}())")
    return build_model(name, num_classes, in_chans)


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
