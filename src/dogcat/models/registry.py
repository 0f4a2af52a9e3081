"""The model registry: builders (callables) by name, never instances. A leaf module: architecture files import
``register`` from here, and ``models/__init__.py`` imports them all, so nothing imports in a circle.

A builder takes ``(num_classes, in_chans, pretrained)`` and returns an ``nn.Module``. Names are
case-insensitive (the template's ``--model=ResNet34`` works). Besides the registered names,
``timm:<name>`` and ``torchvision:<name>`` build any model of those libraries.
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from ..config import DogcatError
from .weights import load_weights, quiet_loads

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, str]] = {}
_LIBRARIES: dict[str, Callable[..., nn.Module]] = {}  # "timm" -> builder of "timm:<name>" (external.py)


class ModelError(DogcatError, ValueError):
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


def register_library(prefix: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``build(name, num_classes, in_chans, pretrained)`` builds ``<prefix>:<name>`` models."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LIBRARIES[prefix] = fn
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered names and their one-line descriptions."""
    return {k: doc for k, (_, doc) in sorted(_REGISTRY.items())}


def build_model(name: str, num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    """Build a model by registered name, ``timm:<name>`` or ``torchvision:<name>``."""
    key = name.strip()
    prefix, _, rest = key.partition(":")
    if rest and prefix.lower() in _LIBRARIES:
        return _LIBRARIES[prefix.lower()](rest, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    if key.lower() not in _REGISTRY:
        close = difflib.get_close_matches(key.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}{hint} Choices: {', '.join(_REGISTRY)}, "
                         "or timm:<name> / torchvision:<name> (`dogcat models`)")
    fn, _ = _REGISTRY[key.lower()]
    return fn(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)


def check_input(name: str, in_chans: int, size: int) -> None:
    """Refuse a model name or an input size the model cannot take, before a run folder is made: the model is
    built on the meta device (no memory, no weights) and run once on a 1 x ``in_chans`` x size x size input."""
    import torch

    with torch.device("meta"):
        model = build_model(name, 2, in_chans)
        try:
            model.eval()(torch.empty(1, in_chans, size, size))
        except NotImplementedError:
            return  # an operation the meta device lacks: nothing learned, the real run will tell
        except Exception as e:  # noqa: BLE001 - a model says "too small" in many ways
            msg = " ".join(str(e).split())[:200]
            raise ModelError(f"option --image-size={size} does not fit --model={name}: its forward pass fails "
                             f"({type(e).__name__}: {msg}); choose another --image-size (or model)") from None


def check_weights(name: str, num_classes: int, in_chans: int, pretrained: str | None = None,
                  load_model_path: str | None = None, strict: bool = True) -> None:
    """Build the model with its ``--pretrained`` weights and load ``--load-model-path`` into it, as training will,
    before a run folder is made: a missing, unreadable or mismatched file, or hub weights that cannot be
    downloaded (offline), is one line there and leaves no failed run behind. Downloaded weights stay in the
    hub's cache, so training does not fetch them again. Quiet: training loads them again and says so."""
    if not pretrained and not load_model_path:
        return
    with quiet_loads():
        model = build_model(name, num_classes, in_chans, pretrained)
        if load_model_path:
            load_weights(model, load_model_path, strict=strict)


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
