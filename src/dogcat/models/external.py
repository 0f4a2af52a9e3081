"""Any timm or torchvision model by name: ``timm:convnext_tiny``, ``torchvision:efficientnet_b0``; and what a
pretrained timm model expects of its input (:func:`pretrained_input`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .registry import ModelError, register_library
from .adapt import load_pretrained, set_in_chans
from .weights import WeightsError, fetch_hub, is_hub


@register_library("timm")
def build_timm(name: str, num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    """timm builds the new head and adapts the first conv itself; a local file goes via its overlay."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise ModelError(f"timm has no model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    kwargs: dict = dict(num_classes=num_classes, in_chans=in_chans)
    if is_hub(pretrained):
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        url = f"https://huggingface.co/{hub_id}" if hub_id else getattr(cfg, "url", None)
        if not url:
            raise WeightsError(f"--pretrained={pretrained}: timm publishes no weights for {name}; pass a local weight "
                               "file, --pretrained=FILE")
        return fetch_hub(f"timm:{name}", url, lambda: timm.create_model(name, pretrained=True, **kwargs))
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_pretrained(model, pretrained)  # local file: our loader reports matched / skipped keys
    return model


@register_library("torchvision")
def build_torchvision(name: str, num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    import torchvision.models as tvm

    try:
        model = tvm.get_model(name, num_classes=num_classes)
    except ValueError as e:
        raise ModelError(f"torchvision has no model {name!r}; choices: {', '.join(tvm.list_models()[:20])}, ...") from e
    model = set_in_chans(model, in_chans)
    load_pretrained(model, pretrained, tvm.get_model_weights(name).DEFAULT if is_hub(pretrained) else None)
    return model


def pretrained_input(name: str, pretrained: str | None) -> dict[str, Any] | None:
    """What the weights of a pretrained timm model were trained on, from its ``pretrained_cfg`` through timm's
    ``resolve_data_config``: ``{"mean", "std", "size", "interpolation", "crop_pct", "source"}``; None when
    there are no pretrained weights or the model is not ``timm:<name>`` (dogcat's and torchvision's models
    keep the ImageNet defaults, which are those of their weights).

    A local file (``--pretrained=FILE``) is taken to hold the weights of the name's pretrained tag (timm's
    default tag when the name has none), since a state dict does not say what it was trained on. The model is
    built on the meta device: no memory, no weights, no download."""
    prefix, _, rest = name.strip().partition(":")
    if not pretrained or prefix.lower() != "timm" or not rest:
        return None
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(rest):
        return None  # build_model says so, in one line
    with torch.device("meta"):
        model = timm.create_model(rest, pretrained=False)
    cfg = resolve_data_config({}, model=model)
    tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag")
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "size": int(cfg["input_size"][-1]),
            "interpolation": str(cfg.get("interpolation", "bilinear")), "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "source": f"timm:{rest}" + (f" (pretrained tag {tag})" if tag and "." not in rest else "")}
