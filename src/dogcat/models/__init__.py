"""Models by name: the registry (``registry.py``), one file per architecture, weight loading (``weights.py``).

A builder takes ``(num_classes, in_chans, pretrained)`` and returns an ``nn.Module``; names are case-insensitive
(the template's ``--model=ResNet34`` works); ``timm:<name>`` and ``torchvision:<name>`` build any model of those
libraries. Importing this package registers the built-in architectures.
"""

from __future__ import annotations

from . import external, fastcnn, resnet, smallcnn, squeezenet  # noqa: F401  (their @register decorators run on import)
from .external import pretrained_input
from .registry import ModelError, build_model, check_input, check_weights, head_module, list_models, register

__all__ = ["ModelError", "build_model", "check_input", "check_weights", "head_module", "list_models",
           "pretrained_input", "register"]
