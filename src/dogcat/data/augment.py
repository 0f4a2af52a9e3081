"""Augmentation presets (``--augment=randaugment|trivialaugment|autoaugment``) and ``--random-erasing=P``.

Both are torchvision v2 transforms of uint8 images, run after the crop + flip of ``default`` and before the
normalisation, on every data path:
- image files: inside the per-sample v2 pipeline (``train_transform``), seeded per item by ``SeededItems``;
- in-memory arrays and packed caches: per image of a uint8 batch by :class:`BatchPolicy`, inside
  ``DataBundle.batch_transform`` (on the device), seeded by the batch's seed (``Batch.seed``).
Either way each draw is a function of (seed, epoch, position): exact resume holds.

Random erasing fills with the data's mean colour (in uint8), which the normalisation then maps to about 0:
torchvision's reference recipe erases after ``Normalize`` with 0, the same picture, but here the erasing can
run before the normalisation on every path (image files are normalised per batch, with no per-item seed).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

PRESETS = ("randaugment", "trivialaugment", "autoaugment")
GEOMETRY = ("default", "flip", "none")  # the crop + flip choices; a preset adds its policy to "default"


def geometry(augment: str) -> str:
    """The crop + flip part of ``--augment``: presets crop and flip as ``default`` does."""
    return "default" if augment in PRESETS else augment


def preset_transform(augment: str) -> v2.Transform | None:
    """The v2 policy of a preset (torchvision's defaults: RandAugment 2 ops at magnitude 9, TrivialAugmentWide,
    AutoAugment's ImageNet policy), None for the plain choices."""
    if augment == "randaugment":
        return v2.RandAugment()
    if augment == "trivialaugment":
        return v2.TrivialAugmentWide()
    if augment == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if augment in GEOMETRY:
        return None
    raise ValueError(f"unknown augment {augment!r}: one of {', '.join(GEOMETRY + PRESETS)}")


def eraser(p: float, mean: Sequence[float]) -> v2.RandomErasing | None:
    """v2.RandomErasing with probability ``p`` filling with ``mean`` (0-1 per channel) as uint8; None for 0."""
    if p <= 0:
        return None
    return v2.RandomErasing(p, value=[float(round(m * 255)) for m in mean])


def policy_steps(augment: str, erasing: float, mean: Sequence[float]) -> list[v2.Transform]:
    """The preset's policy and the eraser, in that order (what follows the crop + flip)."""
    return [t for t in (preset_transform(augment), eraser(erasing, mean)) if t is not None]


class BatchPolicy:
    """A preset and/or random erasing applied image by image to a uint8 (B, C, H, W) batch on its device.

    The policies draw from torch's global CPU generator; they run under a fork of it seeded with the batch's
    seed (only the CPU generator: ``torch.manual_seed`` would also reset CUDA's, which dropout uses), so the
    draws depend on the batch's seed alone. A policy per image, not per batch: one op for a whole batch would
    make every batch one kind of picture."""

    SALT = 0x5EED_A06  # the pad/crop/flip draws use the seed as is: keep these independent of them

    def __init__(self, augment: str, erasing: float, mean: Sequence[float]) -> None:
        self.augment, self.erasing, self.mean = augment, erasing, tuple(mean)
        self.steps = policy_steps(augment, erasing, mean)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.steps or not len(x):
            return x
        tf = v2.Compose(self.steps)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        # one thread on the CPU: an OpenMP team per op on a 28x28 image stalled under load here (RandAugment
        # 0.4 ms an image on one thread, 0.6-8 ms on two)
        threads = torch.get_num_threads()
        if x.device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((seed ^ self.SALT) % 2**63)
                for i in range(len(x)):
                    out[i] = tf(x[i])
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return out

    def __repr__(self) -> str:
        return f"BatchPolicy({self.augment!r}, erasing={self.erasing})"
