"""The template's last two TensorBoard items: the model graph and the projector's embeddings.

- graph: ``SummaryWriter.add_graph`` traces the model (eval mode, so BatchNorm statistics are untouched) on one
  input of the data's shape, once per run; a model that cannot be traced (compiled, data-dependent control
  flow) is skipped with the reason logged.
- embeddings: the penultimate features (the input of the classifier head, ``models.head_module``; a feature
  map is average-pooled to a vector) of up to ``MAX_EMBEDDINGS`` validation images spread evenly over the
  set, with true and predicted class as metadata and small thumbnails, for the projector's PCA / t-SNE.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Batch, collate_items
from ..models.registry import head_module
from .figures import denormalise

log = logging.getLogger("dogcat")

MAX_EMBEDDINGS = 1000
THUMB = 32  # thumbnail side: 1,000 of them make a 1,024 px sprite (the projector's limit is 8,192 px)


def untraceable(model: nn.Module) -> str | None:
    """Why ``model`` cannot go through ``torch.jit.trace``, when that is known beforehand."""
    if getattr(model, "_compiled_call_impl", None) is not None or hasattr(model, "_orig_mod"):
        return "the model is compiled (--compile): torch.jit.trace cannot trace through torch.compile"
    return None


def trace_graph(writer: Any, model: nn.Module, example: torch.Tensor) -> str | None:
    """Write ``model``'s graph with ``writer.add_graph``; returns None, or why it was skipped."""
    reason = untraceable(model)
    if reason:
        return reason
    was_training = model.training
    model.eval()  # a traced forward in train mode would update BatchNorm's running statistics
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values: not the user's concern
            writer.add_graph(model, example)
    except Exception as e:  # noqa: BLE001  # tracing fails in many ways; the run goes on without a graph
        return f"tracing failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    finally:
        model.train(was_training)
    return None


def spread(n: int, k: int = MAX_EMBEDDINGS) -> list[int]:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (val sets may be sorted by class)."""
    m = min(n, k)
    return [i * n // m for i in range(m)]


def _batches(dataset: Any, indices: Sequence[int], size: int) -> list[Batch]:
    """The items at ``indices`` as batches, read in this process: no DataLoader (and no draw from any RNG)."""
    out = []
    for s in range(0, len(indices), size):
        keys = list(indices[s:s + size])
        if hasattr(dataset, "__getitems__"):
            out.append(collate_items(dataset.__getitems__(keys)))
        else:
            out.append(collate_items([dataset[i] for i in keys]))
    return out


@torch.no_grad()
def penultimate(model: nn.Module, dataset: Any, device: torch.device | str, mean: Sequence[float],
                std: Sequence[float], batch_size: int = 128,
                k: int = MAX_EMBEDDINGS) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor] | None:
    """``(features (N, D), labels, predictions, thumbnails (N, C, THUMB, THUMB) in [0, 1])`` of up to ``k``
    images of ``dataset`` (eval transforms), or None when the model has no head to hook or no image is usable."""
    head = head_module(model)
    if head is None or dataset is None or not len(dataset):
        return None
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, args, out: feats.append(args[0].detach()))
    was_training = model.training
    model.eval()
    rows, labels, preds, thumbs = [], [], [], []
    try:
        for batch in _batches(dataset, spread(len(dataset), k), batch_size):
            if not len(batch.labels):
                continue
            feats.clear()
            logits = model(batch.images.to(device))
            if not feats:
                return None
            f = feats[0].float()
            rows.append((f.mean(dim=(2, 3)) if f.ndim == 4 else f.flatten(1)).cpu())
            labels += batch.labels.tolist()
            preds += logits.argmax(1).tolist()
            small = F.interpolate(batch.images.float(), size=(THUMB, THUMB), mode="bilinear", antialias=True)
            thumbs.append(torch.stack([denormalise(x, mean, std) for x in small]))
    finally:
        hook.remove()
        model.train(was_training)
    if not rows:
        return None
    return torch.cat(rows), labels, preds, torch.cat(thumbs)
