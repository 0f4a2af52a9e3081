"""``--cache-features``: the frozen backbone runs once per image, and the head trains on what it gave.

The features are the input of the classifier head (``models.head_module``: timm's ``get_classifier()``,
torchvision's ``fc`` / ``classifier``), caught by a forward hook while the whole model runs once over the
training and validation images in eval mode (the frozen backbone's BatchNorm uses its running statistics,
as it does in training: ``models/freeze.py``). They are kept in memory, on the CPU, as float32; the
training and validation loaders then serve them as batches, and :class:`FeatureHead` is the model the step
trains and validates: the head alone on features. Its ``state_dict`` is the whole model's, so checkpoints,
the EMA, val/test/predict and export see an ordinary model.

Why a hook and not timm's ``forward_features`` / ``forward_head``: one rule for every model with a head
module, timm's, torchvision's and dogcat's; the first batch checks that the head on the caught features
gives the model's own output, and a model where it does not (the head is not its last step) is refused
with one line. No random augmentation (config.loading refuses it with this option): an image's features
are the same every epoch. Memory: N images x the head's input size x 4 bytes (ResNet-18: 2 KiB an image).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..config import Config, DogcatError
from ..data import BadFiles, Batch, DataBundle, ResumableSampler, SeededItems, make_loader
from ..models import head_module
from ..tracking.records import event_record
from .runtime import Runtime

log = logging.getLogger("dogcat")


class FeatureError(DogcatError, ValueError):
    """A model whose features cannot stand in for its images (no head module, or a head that is not its
    last step)."""


class FeatureHead(nn.Module):
    """The model the step trains under ``--cache-features``: ``forward(features)`` is the head's output,
    flattened to (batch, classes). Parameters: the head's; ``state_dict`` / ``load_state_dict``: the whole
    model's (``whole``), so a checkpoint is that of the ordinary model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = head_module(model)
        if head is None:
            raise FeatureError(f"--cache-features: cannot find the classifier head of {type(model).__name__}")
        self.head = head
        object.__setattr__(self, "whole", model)  # not a submodule: parameters() are the head's only

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).flatten(1)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.whole.state_dict(*args, **kwargs)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.whole.load_state_dict(state, strict=strict, assign=assign)


def whole_model(model: nn.Module) -> nn.Module:
    """The image model: a FeatureHead's whole model, any other model itself (for the graph, embeddings)."""
    return model.whole if isinstance(model, FeatureHead) else model


class FeatureSet(Dataset):
    """Features, labels and ids in memory; batches of them as :class:`Batch` (``images`` = the features).
    Threaded like the array data sets: no loader processes (there is nothing to decode)."""

    threaded = True

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, ids: Sequence[str]) -> None:
        self.features, self.labels, self.ids = features, labels, list(ids)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> Batch:
        rows = [k[0] if isinstance(k, tuple) else k for k in keys]
        index = torch.tensor(rows, dtype=torch.long)
        return Batch(self.features[index], self.labels[index], [self.ids[i] for i in rows], [])


@torch.no_grad()
def compute(model: nn.Module, dataset: Dataset, cfg: Config, rt: Runtime, bad: BadFiles,
            batch_transform: Any = None) -> FeatureSet:
    """Every item of ``dataset`` through ``model`` once, in order; the head's inputs kept (module doc)."""
    head = head_module(model)
    assert head is not None  # FeatureHead(model) was built first and checked that
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda mod, args: caught.append(args[0].detach()))
    n = len(dataset)  # type: ignore[arg-type]
    loader = make_loader(SeededItems(dataset), batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                         shuffle=False, seed=cfg.train.seed, sampler=ResumableSampler(n, cfg.train.seed, shuffle=False))
    feats, labels, ids = [], [], []
    try:
        for batch in loader:
            bad.add(batch.bad)
            if not len(batch.labels):
                continue
            images = rt.to_device(batch.images, batch.labels)[0]
            if batch_transform is not None:  # a uint8 training batch: normalised as training would
                images = batch_transform(images, batch.seed)
            caught.clear()
            with rt.autocast():
                logits = model(images)
            if len(caught) != 1:
                raise FeatureError(f"--cache-features: the head of {type(model).__name__} ran {len(caught)} times "
                                   "in one forward pass; its features cannot stand in for the images")
            f = caught[0]
            if not feats:  # once: the head on the caught features must be the model's output
                with rt.autocast():
                    again = head(f).flatten(1)
                if again.shape != logits.shape or not torch.allclose(again.float(), logits.float(), atol=1e-4, rtol=1e-3):
                    raise FeatureError(f"--cache-features: the head of {type(model).__name__} is not the last step "
                                       "of its forward pass, so its input cannot stand in for the images")
            feats.append(f.float().cpu())
            labels.append(batch.labels)
            ids += batch.ids
    finally:
        hook.remove()
    if not feats:
        raise FeatureError("--cache-features: no readable image to compute features of")
    return FeatureSet(torch.cat(feats), torch.cat(labels), ids)


def feature_sets(model: nn.Module, data: DataBundle, cfg: Config, rt: Runtime, bad: BadFiles,
                 log_event: Any) -> tuple[FeatureSet, FeatureSet | None]:
    """The training and validation features of ``data`` (module doc), timed and logged in one line."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        train = compute(model, data.train, cfg, rt, bad, data.batch_transform)
        val = compute(model, data.val, cfg, rt, bad) if data.val is not None else None
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    mb = sum(s.features.numel() * 4 for s in (train, val) if s is not None) / 2**20
    shape = list(train.features.shape[1:])
    log.info(f"--cache-features: features of {len(train)} training and {len(val) if val else 0} validation images "
             f"computed once ({shape} each, {mb:.1f} MiB in memory, {seconds:.1f}s); the head trains on them")
    log_event(event_record("features", train=len(train), val=len(val) if val else 0, shape=shape,
                           megabytes=round(mb, 3), seconds=round(seconds, 3)))
    return train, val
