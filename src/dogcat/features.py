"""``dogcat.embed``: the features a trained model computes just before its classifier, as a numpy array
(``dogcat embed RUN IMAGES --output=features.parquet|.npy`` on the command line).

Which layer, decided once for every model (:func:`feature_model`):

- a timm model (it has ``forward_features`` and ``forward_head``): ``forward_head(forward_features(x),
  pre_logits=True)``, timm's own pooled pre-logits features;
- anything else (torchvision's, dogcat's, your own module): the input of the classifier head
  (:func:`~dogcat.models.head_module`: ``fc``, ``classifier``, ``head``...; else the model's last ``nn.Linear``),
  caught by a forward hook on a copy, so the model is untouched; a feature map there (N, C, H, W) is averaged
  over H and W, anything else flattened to (N, D).

Images are preprocessed as ``predict`` does them (files, folders, globs, PIL images, numpy HWC arrays, CHW
tensors). An unreadable file keeps its row, filled with NaN, so row i is always input i (the files of a folder
in sorted order, as ``predict`` lists them); it is logged as a warning. Exports (ONNX, TorchScript) give logits
only: embedding needs the PyTorch model (a run folder, a checkpoint, or a safetensors export).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from .config import ConfigError, DogcatError
from .inference import Classifier, Input, load
from .io import atomic_write_bytes
from .models import head_module

log = logging.getLogger("dogcat")


def feature_model(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (N, D)`` features of ``model`` before its classifier (module docstring)."""
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    head = head_module(model) or next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no classifier head that dogcat can find (an attribute fc, "
                          "classifier or head, or an nn.Linear): give it one, or a forward_features method")

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            model(x)
        finally:
            hook.remove()
        if not seen:
            raise ConfigError(f"{type(model).__name__}'s head {type(head).__name__} was not called by its forward")
        f = seen[0]
        return f.mean((2, 3)) if f.ndim == 4 else f.flatten(1)

    return forward


def embed(target: Classifier | str | Path, images: Input | Iterable[Input], batch_size: int = 32,
          tta: bool = False, **options: Any) -> np.ndarray:
    """Features (N, D) float32 of ``images`` by the model of ``target``: a :class:`Classifier`, a run folder, a
    checkpoint or a safetensors export (``options`` as for :func:`dogcat.load`: ``checkpoint="last"``,
    ``model=MyNet()`` for your own module). ``tta`` averages with the horizontal flip's features."""
    return embed_rows(target, images, batch_size, tta, **options)[1]


def embed_rows(target: Classifier | str | Path, images: Input | Iterable[Input], batch_size: int = 32,
               tta: bool = False, **options: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``(rows, features)``: the ``path``/``index`` (and ``error``) of each row, and the (N, D) features."""
    clf = target if isinstance(target, Classifier) else load(target, **options)
    if clf.model is None:
        raise ConfigError(f"{clf.source.name} is a {clf.backend} export, which gives class scores only: embed with "
                          "the run folder or checkpoint it was exported from (or a safetensors export)")
    model = clf.model
    rt_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = feature_model(model)
    was_training = model.training
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x.to(rt_device)
            f = features(x).float()
            return (f + features(x.flip(-1)).float()) / 2 if tta else f

    try:
        rows, arrays = clf.run_batches(images, forward, batch_size)
    finally:
        model.train(was_training)
    dim = next((a.shape[0] for a in arrays if a is not None), 0)  # one row each
    out = np.full((len(rows), dim), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = a
    bad = [r for r in rows if "error" in r]
    if bad:
        log.warning(f"{len(bad)} of {len(rows)} images could not be read; their rows are NaN (first: "
                    f"{bad[0].get('path', bad[0].get('index'))}: {bad[0]['error']})")
    return rows, out


def write_features(path: str | Path, rows: list[dict[str, Any]], features: np.ndarray) -> Path:
    """``features`` to ``path``, atomically: ``.npy`` (the array, rows in input order) or ``.parquet``
    (columns ``path`` and ``embedding``, a fixed-size list of float32; unreadable files left out). Parquet needs
    pyarrow; without it, one line saying what to install."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        atomic_write_bytes(path, lambda f: np.save(f, features), need=features.nbytes + 4096)
        return path
    if suffix != ".parquet":
        raise ConfigError(f"option output={str(path)!r}: features are written as .npy or .parquet")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DogcatError("writing parquet needs pyarrow: pip install pyarrow (or use --output=features.npy)") \
            from None
    keep = [i for i, r in enumerate(rows) if "error" not in r]
    names = [str(rows[i].get("path", rows[i].get("index"))) for i in keep]
    flat = pa.array(features[keep].reshape(-1), type=pa.float32())
    table = pa.table({"path": pa.array(names, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])})
    atomic_write_bytes(path, lambda f: pq.write_table(table, f), need=features[keep].nbytes + (1 << 20))
    return path
