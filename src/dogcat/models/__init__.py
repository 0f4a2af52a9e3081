"""Model registry: builders (callables) by name, never instances.

A builder takes ``(num_classes, in_chans, pretrained)`` and returns an ``nn.Module``. Names are
case-insensitive (the seed's ``--model=ResNet34`` works). Besides the registered names,
``timm:<name>`` and ``torchvision:<name>`` build any model of those libraries.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, str]] = {}


class ModelError(ValueError):
    """Unknown model name or unusable weights; the CLI exits 2 with the message."""


def register(name: str, doc: str = "") -> Callable[[Builder], Builder]:
    """Decorator: register a builder under ``name`` (lower-case); a duplicate name is an error."""
    key = name.lower()

    def deco(fn: Builder) -> Builder:
        if key in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[key] = (fn, doc or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered names and their one-line descriptions."""
    return {k: doc for k, (_, doc) in sorted(_REGISTRY.items())}


def build_model(name: str, num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    """Build a model by registered name, ``timm:<name>`` or ``torchvision:<name>``."""
    key = name.strip()
    prefix, _, rest = key.partition(":")
    if rest and prefix.lower() in ("timm", "torchvision"):
        from . import external

        fn = external.build_timm if prefix.lower() == "timm" else external.build_torchvision
        return fn(rest, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    if key.lower() not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(key.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}{hint} Choices: {', '.join(_REGISTRY)}, "
                         "or timm:<name> / torchvision:<name> (`dogcat models`)")
    fn, _ = _REGISTRY[key.lower()]
    return fn(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


def head_module(model: nn.Module) -> nn.Module | None:
    """The classifier head: timm's ``get_classifier()``, else the usual attribute names."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    for attr in ("fc", "classifier", "head", "heads", "last_linear"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module) and any(True for _ in mod.parameters()):
            return mod
    return None


# Import the built-in architectures so their @register decorators run.
from . import fastcnn, resnet, smallcnn, squeezenet  # noqa: E402,F401
