"""``--normalize=auto|imagenet|dataset``: the mean and std every transform, checkpoint and export of a run uses.

They live in the :class:`Preprocess` a layout's ``preprocess`` makes, and a layout builds its transforms from
it; so :func:`with_statistics` hands the layout a ``preprocess`` that returns the chosen mean and std, and the
layout builds everything (eval transforms, batch transforms, the erasing fill) with them. The checkpoint and
the export sidecar store that Preprocess, so ``val``, ``test``, ``predict`` and exports follow.

``dataset``: the per-channel mean and std of the training split (after the train/val split), at the scale the
network sees: array layouts from their array; image files decoded as training decodes them, cached as JSON
next to the packed cache (``<data root>/.dogcat-cache/``, ``~/.cache/dogcat/packed/`` when read-only,
``--cache-dir``), keyed by the files' sizes, mtimes and labels, the mode and the decode size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..config import DataConfig
from ..io import TEXT, MalformedFile, atomic_write_text
from ..jsonfiles import read_json
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, PreprocessError
from .arrays import ArrayImages
from .cache import _writable, candidate_roots, fingerprint
from .layout import DataBundle, Layout, Samples
from .stats import array_moments, channel_mean, file_moments

log = logging.getLogger("dogcat")

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def with_statistics(layout: Layout, mean: Sequence[float], std: Sequence[float]) -> Layout:
    """``layout`` whose ``preprocess`` carries ``mean`` and ``std`` (averaged into one value for grayscale)."""
    base = layout.preprocess

    def preprocess(classes: Sequence[str], size: int) -> Preprocess:
        pre = base(classes, size)
        return replace(pre, mean=channel_mean(mean, pre.in_chans), std=channel_mean(std, pre.in_chans))

    layout.preprocess = preprocess  # type: ignore[method-assign]  # this instance only
    return layout


def with_model_input(layout: Layout, model_input: dict[str, Any]) -> Layout:
    """``layout`` whose ``preprocess`` follows a pretrained model's input (``models.pretrained_input``): its
    interpolation and crop fraction for photos (the ``crop`` rule), and its mean and std for RGB data. The
    precedence, decided here once: ``--normalize=imagenet|dataset`` still wins (``with_statistics`` is applied
    after this); a grayscale layout keeps its own statistics (a 3-channel model's mean is not a 1-channel
    one's); ``--image-size`` always wins over the weights' input size."""
    base = layout.preprocess

    def preprocess(classes: Sequence[str], size: int) -> Preprocess:
        pre = base(classes, size)
        if pre.in_chans == 3:
            pre = replace(pre, mean=tuple(model_input["mean"]), std=tuple(model_input["std"]))
        if pre.resize == "crop":
            pre = replace(pre, interpolation=model_input["interpolation"], crop_pct=model_input["crop_pct"])
        return pre

    layout.preprocess = preprocess  # type: ignore[method-assign]  # this instance only
    return layout


def _cache_file(samples: Samples, source: str, mode: str, side: int, cache_dir: str | None) -> list[Path]:
    """Where the statistics of ``samples`` may be cached, in order of preference."""
    src = Path(source).expanduser().resolve()
    base = src if src.is_dir() else src.parent
    key = hashlib.sha256(f"{fingerprint(samples, base)}\t{mode}\t{side}".encode(**TEXT)).hexdigest()[:16]
    return [root / f"norm-{src.name}-{key}.json" for root in candidate_roots(base, cache_dir)]


def file_statistics(samples: Samples, source: str, mode: str, side: int, cache_dir: str | None) -> Stats:
    """Mean and std of image files (decoded with short side ``side``), from the cache or computed and cached."""
    places = _cache_file(samples, source, mode, side, cache_dir)
    for path in places:
        try:
            return cached_statistics(path, mode)
        except FileNotFoundError:
            continue
        except (MalformedFile, PreprocessError) as e:  # a cache: say so, and compute it again
            log.warning(f"{e}; computing the statistics again")
    log.info(f"computing the mean and std of {len(samples)} training images (--normalize=dataset; cached)")
    mean, std = file_moments([p for p, _ in samples], mode, side)
    path = next((p for p in places if _writable(p.parent)), None)
    if path is not None:
        atomic_write_text(path, json.dumps({"mean": mean, "std": std, "images": len(samples), "mode": mode,
                                            "side": side}) + "\n")
    return mean, std


def cached_statistics(path: Path, mode: str) -> Stats:
    """The mean and std a statistics cache file holds, checked as a checkpoint's preprocessing is (one finite
    value per channel of ``mode``, every std at least ``STD_MIN``); anything else is a MalformedFile or a
    PreprocessError naming the file. A missing file raises FileNotFoundError."""
    d = read_json(path, "statistics cache", limit=1 << 20)
    chans = 3 if mode == "RGB" else 1
    pre = Preprocess.checked(["a", "b"], chans, d.get("mean"), d.get("std"), 1, "crop", f"statistics cache {path}")
    return pre.mean, pre.std


def training_statistics(bundle: DataBundle, cfg: DataConfig, source: str | None) -> Stats:
    """Mean and std of ``bundle``'s training split: its array, or its image files (cached)."""
    if bundle.train is None:
        raise ValueError("--normalize=dataset needs training data")
    if source is None:  # an array layout (no files): its array is what training reads
        if not isinstance(bundle.train, ArrayImages):
            raise ValueError(f"--normalize=dataset reads image files or arrays, not {type(bundle.train).__name__}")
        return array_moments(bundle.train)
    pre = bundle.pre
    side = pre.resize_to if pre.resize == "crop" else pre.size  # the scale the eval transform brings them to
    return file_statistics(list(bundle.splits.get("train", [])), source, pre.mode, side, cfg.cache_dir)


def resolve(layout: Layout, cfg: DataConfig, first: DataBundle | None = None) -> Stats | None:
    """The mean and std ``--normalize`` asks for, or None for ``auto`` (the layout's own)."""
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "dataset" and first is not None:
        return training_statistics(first, cfg, layout.sources(cfg)[0] if layout.real_paths else None)
    return None
