"""Transforms. Per image (torchvision.transforms.v2): a uint8 CHW tensor in, a normalised float tensor out.
Per batch (below): uint8 NCHW batches of in-memory or cached data, in the loader or on the device.

Inputs stay plain tensors (v2 treats a lone plain tensor as an image): wrapping them in
``tv_tensors.Image`` (``v2.ToImage``) costs ~100 us per item through ``__torch_function__``, which
is more than the whole Fashion-MNIST augmentation itself.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .images import shared_empty

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
EVAL_CROP_RATIO = 0.875  # resize to size/0.875 then centre-crop: the usual ImageNet eval protocol


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD, augment: str = "default") -> v2.Compose:
    """Random resized crop (35-100 % of the area) + horizontal flip, for photos.

    ``augment="flip"``: the eval resize + centre crop, then a flip; ``"none"``: the eval transform."""
    if augment != "default":
        flip = [v2.RandomHorizontalFlip()] if augment == "flip" else []
        return v2.Compose([*eval_transform(size, mean, std).transforms[:2], *flip, *_finish(mean, std)])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        *_finish(mean, std),
    ])


def eval_transform(size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> v2.Compose:
    """Resize the short side to size/0.875, centre-crop ``size``."""
    return v2.Compose([
        v2.Resize(round(size / EVAL_CROP_RATIO), antialias=True),
        v2.CenterCrop(size),
        *_finish(mean, std),
    ])


def squash_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Resize the whole picture to size x size: for grayscale models (Fashion-MNIST) shown photos."""
    return v2.Compose([v2.Resize((size, size), antialias=True), *_finish(mean, std)])


# --- whole-batch transforms of uint8 NCHW batches (in-memory and cached data) -----------------------------
# Randomness comes from a CPU generator seeded with the batch's seed (``Batch.seed``, a function of the run's
# seed, the epoch and the batch's position): the same draws on any device, worker count or resumed run.

def normalize_batch(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std``, keeping a channels-last layout; in shared
    memory when run in a loader worker (see ``shared_empty``)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    b, c, h, w = x.shape
    if x.device.type != "cpu":
        out = torch.empty_like(x, dtype=torch.float32)
    elif x.stride(1) == 1 and c > 1:  # channels-last
        out = shared_empty((b, h, w, c), torch.float32).permute(0, 3, 1, 2)
    else:
        out = shared_empty((b, c, h, w), torch.float32)
    return out.copy_(x).mul_(1 / (255 * s)).sub_(m / s)  # in place: one float batch allocated, not three


def center_crop_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of each image, a view; offsets round down (``cache.py`` places its
    S x S windows so that this equals v2.CenterCrop of the whole picture)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def keep_uint8(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``prepare`` of in-memory training sets: the batch as it is; ``batch_transform`` does the rest."""
    return x


class EvalBatch:
    """Eval ``prepare`` of a uint8 batch in the loader: centre crop (``size``; None keeps it) + normalise."""

    def __init__(self, size: int | None, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return normalize_batch(center_crop_batch(x, self.size) if self.size else x, self.mean, self.std)


class BatchPadCropFlip:
    """Zero-padded random crop + horizontal flip + normalise of a whole uint8 batch on its device.

    ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip`` as one gather for the whole batch (v2's
    per-image dispatch cost ~300 us an image at 28x28, a third of the demo's time): what the in-memory
    Fashion-MNIST training set gets as ``DataBundle.batch_transform``."""

    def __init__(self, pad: int, flip: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.pad, self.flip, self.mean, self.std = pad, flip, mean, std

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.pad or self.flip:
            g = torch.Generator().manual_seed(seed)
            b, _, h, w = x.shape
            p = self.pad
            top, left = torch.randint(0, 2 * p + 1, (2, b), generator=g)
            cols = torch.arange(w).expand(b, w)
            if self.flip:
                cols = torch.where(torch.rand(b, 1, generator=g) < 0.5, cols.flip(-1), cols)
            rows = (top[:, None] + torch.arange(h)).to(x.device)
            cols = (left[:, None] + cols).to(x.device)
            padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
            batch = torch.arange(b, device=x.device)[:, None, None]
            x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,H,W,C) -> NCHW
        return normalize_batch(x, self.mean, self.std)


class BatchNormalize:
    """``batch_transform`` that only scales and normalises (the augmentation already happened, or none)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std)


class CropFlipBatch:
    """Train crops of a uint8 batch of cached S x S images, uint8 out (normalised later, on the device).

    ``augment="default"``: random resized crop (35-100 % of the area, aspect 3/4-4/3, antialiased) + flip,
    as ``train_transform``; the area and aspect are drawn once and the crop clamped to the image instead of
    v2's up-to-10 redraws. ``"flip"``: centre crop + flip; ``"none"``: centre crop. One resize per image:
    resampling has no batched form on the CPU worth having (``grid_sample`` measured 7x slower here).
    """

    def __init__(self, size: int, augment: str = "default", scale: tuple[float, float] = (0.35, 1.0)) -> None:
        self.size, self.augment, self.scale = size, augment, scale

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.augment == "none" or b == 0:
            return center_crop_batch(x, self.size)
        g = torch.Generator().manual_seed(seed)
        flips = (torch.rand(b, generator=g) < 0.5).tolist()
        if self.augment == "flip":
            crops = center_crop_batch(x, self.size)
            return torch.stack([im.flip(-1) if f else im for im, f in zip(crops, flips)])
        area = torch.empty(b).uniform_(*self.scale, generator=g) * (h * w)
        ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
        cw = (area * ratio).sqrt().round().clamp(1, w).int().tolist()
        ch = (area / ratio).sqrt().round().clamp(1, h).int().tolist()
        u = torch.rand(2, b, generator=g).tolist()
        out = shared_empty((b, self.size, self.size, c), x.dtype).permute(0, 3, 1, 2)  # channels-last, like x
        for i in range(b):
            top, left = int(u[0][i] * (h - ch[i] + 1)), int(u[1][i] * (w - cw[i] + 1))
            crop = TF.resize(x[i, :, top:top + ch[i], left:left + cw[i]], [self.size, self.size], antialias=True)
            out[i] = crop.flip(-1) if flips[i] else crop
        return out
