"""``make_loader``: a DataLoader with ``collate_items`` and reproducible shuffling and worker seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import collate_items


def resolve_workers(n: int) -> int:
    """-1 -> min(4, CPU cores); 0 -> load in the main process; else n."""
    if n == -1:
        return min(4, os.cpu_count() or 1)
    if n < 0:
        raise ValueError(f"num_workers must be -1 (auto), 0 or positive, got {n}")
    return n


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a worker from its torch seed (base seed from the loader's generator
    + worker id), so augmentations that use them are reproducible and differ between workers."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int,
                drop_last: bool = False, sampler: Sampler | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding :class:`Batch`; the same seed gives the same order and augmentations."""
    workers = resolve_workers(num_workers)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,  # a sampler decides the order itself
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker,
        persistent_workers=workers > 0,  # no worker start-up cost every epoch
    )
