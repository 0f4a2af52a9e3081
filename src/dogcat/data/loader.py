"""``make_loader``: a DataLoader with ``collate_items`` and reproducible shuffling and worker seeds."""

from __future__ import annotations

import os
import random
import signal
from typing import Sequence

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
    + worker id), so augmentations that use them are reproducible and differ between workers.

    Workers ignore SIGINT: a Ctrl-C reaches the whole process group, and the main process handles it
    (checkpoint at the next step); a worker that died of it would break the loader mid-epoch."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ResumableSampler(Sampler):
    """The training order as a pure function of ``(seed, epoch)``, startable at any position.

    Yields ``(index, item_seed)``: :class:`SeededItems` seeds torch's generator with ``item_seed`` before
    the item's transform, so an augmentation depends on (seed, epoch, position) only — not on the worker
    count or on where a run was interrupted. ``set_epoch(epoch, start)`` skips the first ``start``
    positions without touching their files (an exact resume, no decode-and-discard).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 limit: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        # Under DDP each rank takes every world-th position, the order padded by wrapping around (as
        # DistributedSampler does) so that all ranks take the same number of steps.
        self.per_rank = -(-n // world)
        if limit:  # --limit-train-batches: the epoch is the first `limit` positions of each rank's share
            self.per_rank = min(self.per_rank, limit)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, min(start, self.per_rank)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order = self.order(g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()  # lists: indexing a tensor costs ~2 us
        positions = range(self.rank, self.per_rank * self.world, self.world)
        for pos in positions[self.start:]:
            yield int(order[pos % self.n]), int(seeds[pos % self.n])

    def __len__(self) -> int:
        return self.per_rank - self.start

    def order(self, g: torch.Generator) -> list[int]:
        """The epoch's order of item indices, drawn from ``g`` (seeded with seed and epoch) before the items'
        seeds; a subclass may draw another (``data/balance.py``)."""
        return (torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)).tolist()


class ShardSampler(Sampler):
    """Evaluation under DDP: rank r takes items r, r + world, ... — every item exactly once, no padding. With
    ``limit``: that many of them, spread evenly over the rank's share (a layout lists its items class by class:
    the first ones would all be of one class)."""

    def __init__(self, n: int, rank: int, world: int, limit: int = 0) -> None:
        self.indices: Sequence[int] = range(rank, n, world)
        if limit and limit < len(self.indices):  # --limit-val-batches: evenly spread, so every class is in it
            step = len(self.indices) / limit
            self.indices = [self.indices[int(i * step)] for i in range(limit)]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededItems(Dataset):
    """Wraps a dataset for :class:`ResumableSampler`: ``ds[(index, seed)]`` runs ``ds[index]`` under
    torch's generator seeded with ``seed``, restoring the generator afterwards (the model's dropout in the
    main process keeps its own stream)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]):
        """A whole batch: datasets that cut batches themselves (``ArrayImages``) get the keys, seeds and all."""
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(keys)
        return [self[k] for k in keys]

    @property
    def threaded(self) -> bool:
        return bool(getattr(self.dataset, "threaded", False))


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int,
                drop_last: bool = False, sampler: Sampler | None = None,
                pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader yielding :class:`Batch`; the same seed gives the same order and augmentations.

    Defaults from the machine: ``num_workers=-1`` -> min(4, cores), but no processes for datasets that load
    whole batches from one array on threads (``ArrayImages``: in-memory and cached data); ``pin_memory``
    (None) when CUDA is there, so that the trainer's ``non_blocking`` copies overlap; about 8 batches in
    flight in all.
    """
    workers = 0 if getattr(dataset, "threaded", False) else resolve_workers(num_workers)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,  # a sampler decides the order itself
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker,
        persistent_workers=workers > 0,  # no worker start-up cost every epoch
        prefetch_factor=max(2, 8 // workers) if workers else None,
    )
