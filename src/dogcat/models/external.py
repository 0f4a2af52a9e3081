"""Any timm or torchvision model by name: ``timm:convnext_tiny``, ``torchvision:efficientnet_b0``."""

from __future__ import annotations

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
