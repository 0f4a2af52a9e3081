"""What ``dogcat.train`` takes besides options (:class:`Given`): a user's own ``nn.Module`` (``model=``) and data
given in Python (``train_data=`` / ``val_data=``: a torch Dataset or a pandas DataFrame, see ``data/given.py``).
Nothing needs registering.

A module is trained as given, in place (as Lightning does), and checkpointed like any other: its
``state_dict`` under ``model``, the config recording ``model: custom:<module>.<class>``, text only. A checkpoint is
data: that name is never imported, so loading the run needs the module again (``dogcat.load(RUN, model=Net())``,
``dogcat.train(resume=RUN, model=Net(), ...)``), and the command line, which cannot build it, says so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..config import Config, ConfigError, DataConfig, to_yaml
from ..data import DataBundle, build_train_val
from ..data.given import given_bundle, is_frame
from ..io import atomic_write_text, one_line
from ..models import ModelError, check_input, check_weights

CUSTOM = "custom:"  # the prefix of the model name a run of a user's own module records


@dataclass
class Given:
    """The Python objects of a ``train`` call, kept out of the config (which holds text only)."""

    module: nn.Module | None = None
    train_data: Any = None
    val_data: Any = None
    classes: Sequence[Any] | None = None

    @classmethod
    def take(cls, overrides: dict[str, Any]) -> "Given":
        """Pop the Python objects out of ``train``'s keyword ``overrides`` (a ``model`` that is a module, the
        data and its classes); a model given by name stays an option, as do a DataFrame's column names (the
        ``path_column`` / ``label_column`` options list files use too). The config then names them:
        ``model: custom:<module>.<class>``, ``dataset: list`` for DataFrames, ``python`` for datasets."""
        g = cls(train_data=overrides.pop("train_data", None), val_data=overrides.pop("val_data", None),
                classes=overrides.pop("classes", None))
        if isinstance(overrides.get("model"), nn.Module):
            g.module = overrides.pop("model")
            overrides["model"] = module_name(g.module)
        elif overrides.get("model") is not None and not isinstance(overrides["model"], str):
            raise ConfigError(f"option model={overrides['model']!r}: give a model name (`dogcat models`) or a "
                              "torch.nn.Module")
        if g.val_data is not None and g.train_data is None:
            raise ConfigError("val_data= needs train_data= (the classes come from it)")
        if g.train_data is not None:
            overrides["dataset"] = "list" if is_frame(g.train_data) else "python"
        return g

    def data(self, cfg: DataConfig, processes: int = 1, model_input: dict[str, Any] | None = None) -> DataBundle:
        """The training and validation data: the given objects, else what the options name (``model_input``: a
        pretrained model's input, see ``data.build_train_val``)."""
        if self.train_data is None:
            return build_train_val(cfg, processes, model_input)
        return given_bundle(cfg, self.train_data, self.val_data, self.classes, cfg.path_column, cfg.label_column)

    def check_model(self, cfg: Config, data: DataBundle) -> None:
        """The model fits the data (one line, before a run folder exists): a registered one is built on the meta
        device; a user's module is run once on a batch of 2 zero images and must give (2, classes) logits."""
        pre, m = data.pre, cfg.model
        if self.module is None:
            check_input(m.model, pre.in_chans, cfg.data.image_size)
            check_weights(m.model, len(pre.classes), pre.in_chans, m.pretrained, m.load_model_path,
                          not m.load_not_strict)
            return
        if m.pretrained:
            raise ConfigError(f"option pretrained={m.pretrained!r} builds a registered model's backbone; load your "
                              "own weights into your module before passing it (model=...)")
        check_module(self.module, pre.in_chans, cfg.data.image_size, len(pre.classes))

    def record_data(self, cfg: Config, config_file: Path, splits: Path) -> None:
        """A DataFrame run names its data as the list files ``RUN/splits/{train,val}.csv`` (written with the
        parts): config.yaml and every checkpoint then say where the data is, and resume reads it back."""
        if self.train_data is None or not is_frame(self.train_data):
            return
        d = cfg.data
        d.dataset, d.train_data_root, d.val_data_root = "list", None, None
        d.path_column, d.label_column = "path", "label"  # the split files' own columns, not the DataFrame's
        d.train_list = str((splits / "train.csv").resolve())
        d.val_list = str((splits / "val.csv").resolve()) if (self.val_data is not None or d.val_split) else None
        atomic_write_text(config_file, to_yaml(cfg))


def module_name(module: nn.Module) -> str:
    """``custom:<module>.<qualname>`` of a module's class: a record for people, never imported."""
    cls = type(module)
    return f"{CUSTOM}{cls.__module__}.{cls.__qualname__}"


def check_module(module: nn.Module, in_chans: int, size: int, num_classes: int) -> None:
    """One forward pass of 2 zero images, in eval mode without gradients (nothing learned, no BatchNorm
    statistics changed); a failure or logits of another shape is one ModelError line."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, in_chans, size, size, device=device))
    except Exception as e:  # noqa: BLE001 - a user's forward fails in its own ways
        raise ModelError(f"model={type(module).__name__}: its forward pass fails on a batch of shape "
                         f"(2, {in_chans}, {size}, {size}) ({type(e).__name__}: {one_line(e, 200)}); it must take "
                         "NCHW images of --image-size") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model={type(module).__name__}: gives {shape} for 2 images; a classifier of "
                         f"{num_classes} classes must give logits of shape (2, {num_classes})")
