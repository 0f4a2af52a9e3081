"""dogcat: a readable PyTorch image-classification toolkit (Kaggle Dogs vs. Cats, any labelled folder).

Library entry points (the CLI only wraps these)::

    result = dogcat.train(model="resnet18", train_data_root="data/train", max_epoch=3)  # or a Config / recipe
    dogcat.evaluate(result.run_dir)                 # validation metrics, result.json
    dogcat.calibrate(result.run_dir)                # fit a temperature on the validation split, store it
    dogcat.test(result.run_dir, test_data_root="data/test")   # submission.csv
    dogcat.predict(result.run_dir, ["some/image.jpg"])
    clf = dogcat.load("runs/X")                     # or a checkpoint, or an export (model.onnx + model.onnx.json)
    clf.predict(["a.jpg", "photos/", pil_image, hwc_array], tta=True, top_k=2)   # [{"path"/"index", "class", ...}]
    dogcat.train(model=MyNet(), train_data=dataset_or_dataframe, classes=[...])   # your own module and data
    result.load()                                   # a Classifier of the run; result.model: the nn.Module
    dogcat.embed(result.run_dir, ["photos/"])       # (N, D) numpy features of the layer before the classifier
    dogcat.explain(result.run_dir, ["photos/"])      # Grad-CAM pictures -> RUN/explain/
    dogcat.summarize(model, (1, 3, 224, 224))        # layers, parameters, FLOPs, activations

``import dogcat`` loads no torch: the names below are imported on first use (PEP 562), so the command line
starts fast and a notebook pays for torch only when it trains or predicts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .console import install_default

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it from here)

_LAZY = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "calibrate": "engine.calibrate", "evaluate": "engine.evaluator", "report": "engine.evaluator",
    "test": "engine.evaluator", "load_model": "engine.trained", "Result": "engine.result", "train": "inference",
    "embed": "features",
    "Classifier": "inference", "load": "inference", "predict": "inference",
    "explain": "explanation", "summarize": "models.summary",
}
__all__ = sorted(_LAZY)

install_default()  # epoch summaries show in a notebook even when it configured no logging (console.py)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'dogcat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .config import Config, ConfigError, load_config
    from .engine.calibrate import calibrate
    from .engine.evaluator import evaluate, report, test
    from .engine.trained import load_model
    from .engine.result import Result
    from .explanation import explain
    from .features import embed
    from .inference import Classifier, load, predict, train
    from .models.summary import summarize
