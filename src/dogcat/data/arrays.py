"""Datasets over one uint8 array of images, cut into whole batches by index.

The array is (N, H, W, C): a tensor in RAM (Fashion-MNIST, or a packed cache that fits ``in_memory_mb``) or a
``numpy.memmap`` of a packed cache file (``cache.py``). The DataLoader calls ``__getitems__`` with a whole
batch of keys, so a batch is one gather (or one crop per image) instead of ``batch_size`` calls and a
collate. Training batches leave as uint8 (4x less to copy to a GPU; cached photos already cropped, see
``CropFlipBatch``) and ``DataBundle.batch_transform`` (augments and) normalises them on the device; eval
batches leave normalised.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import Batch, Item, shared_empty

Prepare = Callable[[torch.Tensor, int], torch.Tensor]  # (uint8 NCHW batch, batch seed) -> batch


class ArrayImages(Dataset):
    """Samples whose pixels are rows of ``pixels``; ``rows[i] == -1`` marks a file that could not be decoded
    (reported in ``Batch.bad`` with ``errors[path]``, as :class:`ImageFiles` reports it).

    ``prepare`` runs in the loader on each batch (uint8 NCHW, a channels-last view; or, when it has
    ``per_image = True``, a list of HWC numpy views straight into ``pixels``) with the batch's seed: a crop
    for training, crop + normalise for evaluation. Keys are indices or the ``(index, seed)`` pairs of
    :class:`ResumableSampler`; a batch's seed is its first item's seed.
    """

    def __init__(self, pixels: torch.Tensor | np.ndarray, rows: Sequence[int], samples: Sequence[tuple[str, int]],
                 ids: Sequence[str], prepare: Prepare, errors: dict[str, str] | None = None) -> None:
        if not len(rows) == len(samples) == len(ids):
            raise ValueError("rows, samples and ids differ in length")
        self.pixels = pixels
        self.rows = [int(r) for r in rows]
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.ids = list(ids)
        self.prepare = prepare
        self.errors = dict(errors or {})

    # Loaded in the main process (make_loader starts no workers): a batch is a gather, or crops on threads,
    # straight from the array; a worker process would add a fresh shared-memory batch per step, which cost
    # 0.16 ms an image here, more than the crop itself.
    threaded = True

    @property
    def in_memory(self) -> bool:
        """True for a tensor in RAM, False for a memory-mapped cache file."""
        return isinstance(self.pixels, torch.Tensor)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.pixels, np.memmap):  # spawned workers reopen the file instead of copying it
            state["pixels"] = ("memmap", self.pixels.filename, self.pixels.shape)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["pixels"], tuple):
            _, filename, shape = state["pixels"]
            state["pixels"] = np.memmap(filename, np.uint8, "c", shape=shape)
        self.__dict__.update(state)

    def gather(self, rows: list[int]) -> torch.Tensor:
        """Rows of ``pixels`` as a uint8 (B, C, H, W) channels-last tensor (shared memory in a worker)."""
        shape = (len(rows), *self.pixels.shape[1:])
        out = shared_empty(shape, torch.uint8)
        if isinstance(self.pixels, torch.Tensor):
            torch.index_select(self.pixels, 0, torch.tensor(rows, dtype=torch.int64), out=out)
        elif rows:  # mode="clip": with "raise", numpy copies through a temporary buffer
            np.take(self.pixels, rows, axis=0, out=out.numpy(), mode="clip")
        return out.permute(0, 3, 1, 2)

    def views(self, rows: list[int]) -> list[np.ndarray]:
        """Rows as HWC uint8 numpy views, no copy: for a ``prepare`` that reads each image once anyway (a crop).
        Plain ndarray views: a memmap's own indexing costs ~10 us an image."""
        pixels = self.pixels.numpy() if isinstance(self.pixels, torch.Tensor) else self.pixels.view(np.ndarray)
        return [pixels[r] for r in rows]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> Batch:
        pairs = [k if isinstance(k, tuple) else (int(k), 0) for k in keys]
        good = [i for i, _ in pairs if self.rows[i] >= 0]
        bad = [(self.samples[i][0], self.errors.get(self.samples[i][0], "unreadable"))
               for i, _ in pairs if self.rows[i] < 0]
        seed = pairs[0][1] if pairs else 0
        labels = torch.tensor([self.samples[i][1] for i in good], dtype=torch.int64)
        if not good:
            return Batch(torch.empty(0, 0, 0, 0), labels, [], bad, seed)
        rows = [self.rows[i] for i in good]
        per_image = getattr(self.prepare, "per_image", False)
        images = self.prepare(self.views(rows) if per_image else self.gather(rows), seed)
        return Batch(images, labels, [self.ids[i] for i in good], bad, seed)

    def __getitem__(self, i: int) -> Item:
        b = self.__getitems__([i])
        path, label = self.samples[i]
        if not b.ids:
            return Item(None, label, self.ids[i], path, b.bad[0][1])
        return Item(b.images[0], label, self.ids[i], path, None)
