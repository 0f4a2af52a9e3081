"""torchvision.transforms.v2 pipelines; all take a uint8 CHW tensor and return a normalised float tensor.

Inputs stay plain tensors (v2 treats a lone plain tensor as an image): wrapping them in
``tv_tensors.Image`` (``v2.ToImage``) costs ~100 us per item through ``__torch_function__``, which
is more than the whole Fashion-MNIST augmentation itself.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

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


class PadCropFlip:
    """Zero-padded random crop + horizontal flip + normalise for small in-memory uint8 images.

    The same as ``v2.RandomCrop(size, padding=pad)`` + ``v2.RandomHorizontalFlip`` + normalise, by
    slicing: ~20 us an image against ~300 us through v2's per-call dispatch, which at 28x28 cost a
    third of the demo's training time. Randomness from torch's generator (seeded per loader worker).
    """

    def __init__(self, pad: int, flip: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.pad, self.flip = pad, flip
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.pad:
            h, w = img.shape[-2:]
            padded = torch.nn.functional.pad(img, (self.pad,) * 4)
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[..., i:i + h, j:j + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img.float().div_(255) - self.mean) / self.std


def fmnist_train_transform(size: int = 28, mean: tuple[float, ...] = FMNIST_MEAN,
                           std: tuple[float, ...] = FMNIST_STD, augment: str = "default") -> Callable:
    """Padded random crop (4 px at 28) + flip, the usual small-image augmentation (``augment`` as above)."""
    pad = size // 7 if augment == "default" else 0
    fast = PadCropFlip(pad, augment != "none", mean, std)
    if size == 28:
        return fast
    return v2.Compose([v2.Resize(size, antialias=True), fast])


def fmnist_eval_transform(size: int = 28, mean: tuple[float, ...] = FMNIST_MEAN,
                          std: tuple[float, ...] = FMNIST_STD) -> v2.Compose:
    resize = [v2.Resize(size, antialias=True)] if size != 28 else []
    return v2.Compose([*resize, *_finish(mean, std)])
