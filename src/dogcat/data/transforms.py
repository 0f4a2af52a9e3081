"""Transforms. Per image (torchvision.transforms.v2): a uint8 CHW tensor in, a normalised float tensor out.
Per batch (below): uint8 NCHW batches of in-memory or cached data, in the loader or on the device.

Inputs stay plain tensors (v2 treats a lone plain tensor as an image): wrapping them in
``tv_tensors.Image`` (``v2.ToImage``) costs ~100 us per item through ``__torch_function__``, which
is more than the whole Fashion-MNIST augmentation itself.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from ..preprocess import EVAL_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, Preprocess, stored_side
from .augment import BatchPolicy, geometry, policy_steps
from .images import shared_empty

try:  # optional (the [fast] extra): the fastest resize for cached crops (see CropFlipBatch); torch's otherwise
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

log = logging.getLogger("dogcat")


@functools.cache
def _note_no_opencv() -> None:
    """Once per process: where a pip install without the [fast] extra is slower, and what to do about it."""
    log.info("OpenCV is not installed: cached training crops use torch's resize, several times slower "
             "(pip install 'dogcat-vision[fast]')")


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                    augment: str = "default", normalize: bool = True, erasing: float = 0.0,
                    interpolation: str = "bilinear", crop_pct: float = EVAL_CROP_RATIO) -> v2.Compose:
    """Random resized crop (35-100 % of the area) + horizontal flip, for photos.

    ``augment="flip"``: the eval resize + centre crop, then a flip; ``"none"``: the eval transform; a preset
    (``augment.PRESETS``): ``default``, then its policy. ``erasing``: then random erasing with this probability.
    ``normalize=False`` stops at the uint8 crop (``BatchNormalize`` finishes the batch on the device).
    ``interpolation`` / ``crop_pct``: the model's (``Preprocess``), for the resizes and the eval crop."""
    finish = _finish(mean, std) if normalize else []
    policy = policy_steps(augment, erasing, mean)
    if geometry(augment) != "default":
        flip = [v2.RandomHorizontalFlip()] if augment == "flip" else []
        crop = eval_transform(size, mean, std, interpolation, crop_pct).transforms[:2]
        return v2.Compose([*crop, *flip, *policy, *finish])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True, interpolation=_mode(interpolation)),
        v2.RandomHorizontalFlip(),
        *policy,
        *finish,
    ])


def _mode(interpolation: str) -> v2.InterpolationMode:
    """``Preprocess.interpolation`` (a name) as torchvision's mode."""
    return v2.InterpolationMode(interpolation)


def eval_transform(size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                   interpolation: str = "bilinear", crop_pct: float = EVAL_CROP_RATIO) -> v2.Compose:
    """Resize the short side to size/crop_pct (0.875 unless the model's weights say otherwise), centre-crop
    ``size``."""
    return v2.Compose([
        v2.Resize(stored_side(size, crop_pct), antialias=True, interpolation=_mode(interpolation)),
        v2.CenterCrop(size),
        *_finish(mean, std),
    ])


def squash_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Resize the whole picture to size x size: for grayscale models (Fashion-MNIST) shown photos."""
    return v2.Compose([v2.Resize((size, size), antialias=True), *_finish(mean, std)])


def eval_transform_for(pre: Preprocess) -> v2.Compose:
    """The eval transform ``pre`` implies: its resize rule (``crop`` or ``squash``), size and normalisation."""
    if pre.resize == "squash":
        return squash_transform(pre.size, pre.mean, pre.std)
    return eval_transform(pre.size, pre.mean, pre.std, pre.interpolation, pre.crop_pct)


def eval_decode_side(pre: Preprocess) -> int:
    """The short side a picture must keep when decoded for ``pre``'s eval transform (``decode_image``'s
    ``min_short``): what the transform resizes it to. 0 (decode whole) for an interpolation other than
    bilinear: the decoder's own reduction resizes bilinearly, and the transform must do the resizing."""
    if pre.interpolation != "bilinear":
        return 0
    return pre.size if pre.resize == "squash" else pre.resize_to


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool per process (a pool does not survive a fork) and size."""
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="dogcat-crop")
    return _POOLS[key]


# --- whole-batch transforms of uint8 NCHW batches (in-memory and cached data) -----------------------------
# Randomness comes from a CPU generator seeded with the batch's seed (``Batch.seed``, a function of the run's
# seed, the epoch and the batch's position): the same draws on any device, worker count or resumed run.

def _float_like(x: torch.Tensor) -> torch.Tensor:
    """An empty float32 tensor shaped like ``x``: laid out like it on a GPU; on the CPU contiguous NCHW (in
    shared memory in a loader worker): normalising channels-last into channels-last broadcasts the mean over
    the innermost dimension, 3x slower here than converting into NCHW on the way."""
    if x.device.type != "cpu":
        return torch.empty_like(x, dtype=torch.float32)
    return shared_empty(x.shape, torch.float32)


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                    out: torch.Tensor | None = None, threads: int = 1) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std`` into ``out`` (default: a new tensor, NCHW on the
    CPU, laid out like ``x`` on a GPU).

    On the CPU it runs a cache-sized chunk of images at a time (the three passes then stay in L2: 0.08 against
    0.15 ms an image at 224 px), chunks spread over ``threads``. With more than one torch thread the chunks
    go through numpy instead (no OpenMP; its loops release the GIL): torch's OpenMP team per small op stalled
    for seconds next to busy loader workers on this 2-core machine."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    scale, shift = 1 / (255 * s), m / s
    out = _float_like(x) if out is None else out
    if x.device.type != "cpu":
        return out.copy_(x).mul_(scale.to(x.device)).sub_(shift.to(x.device))
    step = max(1, 2**18 // max(1, x[0].numel()))
    if torch.get_num_threads() == 1:
        def chunk(i: int) -> None:
            out[i:i + step].copy_(x[i:i + step]).mul_(scale).sub_(shift)
    else:
        xs, os_, sc, sh = x.numpy(), out.numpy(), scale.numpy(), shift.numpy()

        def chunk(i: int) -> None:
            np.multiply(xs[i:i + step], sc, out=os_[i:i + step], casting="unsafe")
            np.subtract(os_[i:i + step], sh, out=os_[i:i + step])

    starts = list(range(0, len(x), step))
    threads = min(threads, len(starts))
    if threads > 1:  # one share of the chunks per thread: a task per chunk cost ~15 us
        shares = [starts[t::threads] for t in range(threads)]
        list(thread_pool(threads).map(lambda share: [chunk(i) for i in share], shares))
    else:
        for i in starts:
            chunk(i)
    return out


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

    def __init__(self, size: int | None, mean: tuple[float, ...], std: tuple[float, ...], threads: int = 1) -> None:
        self.size, self.mean, self.std, self.threads = size, mean, std, threads

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        x = center_crop_batch(x, self.size) if self.size else x
        return normalize_batch(x, self.mean, self.std, threads=self.threads)


class BatchPadCropFlip:
    """Zero-padded random crop + horizontal flip + normalise of a whole uint8 batch on its device.

    ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip`` as one gather for the whole batch (v2's
    per-image dispatch cost ~300 us an image at 28x28, a third of the demo's time): what the in-memory
    Fashion-MNIST training set gets as ``DataBundle.batch_transform``. ``policy`` (a preset, random erasing)
    runs on the uint8 crops before the normalisation."""

    def __init__(self, pad: int, flip: bool, mean: tuple[float, ...], std: tuple[float, ...],
                 policy: BatchPolicy | None = None) -> None:
        self.pad, self.flip, self.mean, self.std = pad, flip, mean, std
        self.policy = policy if policy else None

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
        if self.policy is not None:
            x = self.policy(x, seed)
        return normalize_batch(x, self.mean, self.std)


class BatchNormalize:
    """``batch_transform`` of photos: scale and normalise uint8 crops cut in the loader (cached or not).
    A float batch is 4x the bytes of a uint8 one, through shared memory and to the GPU: on image files this
    took the loader (bench/data.py's b) from about 2.6 to 1.8 CPU-ms an image here.

    On the CPU it writes into one of two buffers it keeps, so the batch it returns is valid until the call
    after next (the trainer is long done with it by then): a fresh float batch (77 MB at 128 x 224 px) costs
    ~19k page faults, 0.3-0.6 ms an image here, several times the arithmetic.

    ``policy`` (a preset, random erasing; cached crops only: image files had theirs per sample) runs on the
    uint8 crops first."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], threads: int = 1,
                 policy: BatchPolicy | None = None) -> None:
        self.mean, self.std, self.threads = mean, std, threads
        self.policy = policy if policy else None
        self._buffers: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.policy is not None:
            x = self.policy(x, seed)
        if x.device.type != "cpu":
            return normalize_batch(x, self.mean, self.std)
        buf = self._buffers.pop(0) if len(self._buffers) == 2 else None
        if buf is None or buf.shape != x.shape:
            buf = _float_like(x)
        self._buffers.append(buf)
        return normalize_batch(x, self.mean, self.std, out=buf, threads=self.threads)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": []}


class CropFlipBatch:
    """Train crops of cached S x S images (a list of HWC numpy views), uint8 out, normalised later.

    ``augment="default"``: random resized crop (35-100 % of the area, aspect 3/4-4/3) + flip, as
    ``train_transform``; the area and aspect are drawn once and the crop clamped to the image instead of v2's
    up-to-10 redraws. ``"flip"``: centre crop + flip; ``"none"``: centre crop; a preset: as ``default`` (its
    policy runs later, in ``BatchNormalize``). Returns (B, C, size, size),
    channels-last. One resize per image, on ``threads`` threads (OpenCV releases the GIL): per 224 px image,
    OpenCV's bilinear resize takes 0.127 ± 0.008 ms against 0.283 ± 0.057 for torch's antialiased one
    (bench/per_image.py; ``grid_sample`` on a whole batch was slower still). OpenCV does not antialias, which only matters when shrinking: here at
    most 1.14x (a whole S x S square to ``size`` = 0.875 S); upscaled crops agree with torch's within 1 level.
    OpenCV is optional (the ``[fast]`` extra; ``opencv=False`` forces the fallback): without it, torch's resize
    on one thread (a resize on each of the pool's threads would nest OpenMP teams); the whole cached pipeline
    then runs at a quarter to a third of the speed (bench/data.py, c/d: 4.6 ± 0.3x wall, 2.8 ± 0.2x per
    CPU-second).
    """

    per_image = True  # takes a list of HWC views into the cache: no batch gathered just to be cropped

    def __init__(self, size: int, augment: str = "default", scale: tuple[float, float] = (0.35, 1.0),
                 threads: int = 1, opencv: bool | None = None) -> None:
        self.size, self.augment, self.scale, self.threads = size, geometry(augment), scale, threads
        self.opencv = cv2 is not None if opencv is None else opencv and cv2 is not None  # False: torch's resize
        if cv2 is None and opencv is None:
            _note_no_opencv()

    def _boxes(self, b: int, h: int, w: int, g: torch.Generator) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each image's crop."""
        if self.augment != "default":
            top, left = (h - self.size) // 2, (w - self.size) // 2
            return [(top, left, self.size, self.size)] * b
        area = torch.empty(b).uniform_(*self.scale, generator=g) * (h * w)
        ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
        cw = (area * ratio).sqrt().round().clamp(1, w).int().tolist()
        ch = (area / ratio).sqrt().round().clamp(1, h).int().tolist()
        u = torch.rand(2, b, generator=g).tolist()
        return [(int(u[0][i] * (h - ch[i] + 1)), int(u[1][i] * (w - cw[i] + 1)), ch[i], cw[i]) for i in range(b)]

    def _crop(self, img: np.ndarray, box: tuple[int, int, int, int], flip: bool, out: np.ndarray) -> None:
        """One crop of an HWC image, resized into ``out`` (size x size x C) and maybe mirrored; numpy and
        OpenCV only (no torch op, and OpenMP team, on the pool's threads) unless OpenCV is missing."""
        top, left, ch, cw = box
        crop = img[top:top + ch, left:left + cw]
        if (ch, cw) == (self.size, self.size):
            np.copyto(out, crop)
        elif self.opencv:
            cv2.resize(crop, (self.size, self.size), dst=out, interpolation=cv2.INTER_LINEAR)
        else:
            t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
            out[:] = torch.nn.functional.interpolate(t, size=(self.size, self.size), mode="bilinear",
                                                     antialias=True)[0].permute(1, 2, 0).numpy()
        if flip and self.opencv:
            cv2.flip(out, 1, dst=out)  # in place
        elif flip:
            out[:] = out[:, ::-1]  # numpy copies through a buffer when source and target overlap

    def __call__(self, x: Sequence[np.ndarray], seed: int) -> torch.Tensor:
        b, (h, w, c) = len(x), x[0].shape
        out = shared_empty((b, self.size, self.size, c), torch.uint8)  # HWC, as the cache and OpenCV have it
        g = torch.Generator().manual_seed(seed)
        flips = (torch.rand(b, generator=g) < 0.5).tolist() if self.augment != "none" else [False] * b
        jobs = list(zip(x, self._boxes(b, h, w, g), flips, out.numpy()))
        threads = min(self.threads, b) if self.opencv else 1  # torch's resize would nest OpenMP teams
        if threads > 1:  # one slice of the batch per thread: a task per image cost more than its crop
            list(thread_pool(threads).map(self._crops, [jobs[t::threads] for t in range(threads)]))
        else:
            self._crops(jobs)
        return out.permute(0, 3, 1, 2)

    def _crops(self, jobs: list) -> None:
        for job in jobs:
            self._crop(*job)
