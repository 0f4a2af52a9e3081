"""``dogcat stats DATA``: what a data set holds (class counts, image sizes and modes, unreadable files, per-channel
mean and std), for any registered layout; and the pixel moments ``--normalize=dataset`` uses (``normalize.py``).

Image files are opened one by one (PIL reads a header for the size and mode, then the file is decoded for the
pixels); array layouts (Fashion-MNIST, ``.npz``) are read from their training set's array.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..console import escape
from ..preprocess import STD_MIN
from .arrays import ArrayImages
from .images import DataError, decode_bytes, decode_image, read_image_file
from .layout import detect, get_layout
from .pipeline import ImageLayout


class Moments:
    """Running per-channel sums of pixel values (scaled to 0-1) and their squares, in float64: every pixel of
    every image weighs the same, so a large picture counts more than a small one, as it does in training."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, None, None

    def add(self, x: torch.Tensor | np.ndarray) -> None:
        """A uint8 batch or image, channels on ``axis`` -3 (C, H, W or N, C, H, W)."""
        t = torch.as_tensor(x)
        if t.ndim == 3:
            t = t[None]
        v = t.transpose(0, 1).reshape(t.shape[1], -1).double() / 255
        s, ss = v.sum(1), (v * v).sum(1)
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.n += v.shape[1]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel; nothing added is a ValueError."""
        if not self.n:
            raise ValueError("no readable image to compute a mean and std from")
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0)
        return (tuple(round(float(m), 6) for m in mean),
                tuple(max(round(float(v) ** 0.5, 6), STD_MIN) for v in var))  # a constant channel: the least std


def file_moments(paths: Iterable[str], mode: str, min_short: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of image files decoded in ``mode`` (``min_short``: as ``decode_image`` scales them for the
    network; 0: full size); unreadable files are left out."""
    m = Moments()
    for path in paths:
        img, _ = decode_image(path, mode, min_short)
        if img is not None:
            m.add(img)
    return m.result()


def array_moments(ds: ArrayImages, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the rows of an :class:`ArrayImages` (N, H, W, C) that its samples use."""
    m = Moments()
    rows = [r for r in ds.rows if r >= 0]
    for i in range(0, len(rows), chunk):
        m.add(ds.gather(rows[i:i + chunk]))
    return m.result()


@dataclass
class DataStats:
    """What ``dogcat stats`` reports."""

    source: str
    layout: str
    classes: list[str]
    counts: dict[str, int]
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    modes: Counter = field(default_factory=Counter)  # PIL mode -> images
    bad: list[tuple[str, str]] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    channels: str = "RGB"  # the mode mean and std are computed in (the layout's)

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "layout": self.layout, "images": self.images, "classes": self.classes,
                "counts": self.counts, "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
                "modes": dict(self.modes.most_common()), "unreadable": [{"path": p, "reason": r} for p, r in self.bad],
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    def format(self, top: int = 8) -> str:
        """A plain-text report."""
        width = max([len(escape(c)) for c in self.classes] + [5])  # names shown escaped: one row each
        lines = [f"{self.source}: {self.images:,} images, {len(self.classes)} classes ({self.layout} layout)", ""]
        lines += [f"  {'class':<{width}}  {'images':>8}  share"]
        for name in self.classes:
            n = self.counts.get(name, 0)
            lines.append(f"  {escape(name):<{width}}  {n:>8,}  {n / max(self.images, 1):6.1%}")
        if self.counts:
            lo, hi = min(self.counts.values()), max(self.counts.values())
            lines.append(f"  largest / smallest class: {hi / lo:.2f}" if lo else "  a class has no images")
        lines += ["", "sizes (width x height): " + ", ".join(f"{w}x{h} {n:,}" for (w, h), n in
                                                              self.sizes.most_common(top))]
        if len(self.sizes) > top:
            lines[-1] += f" (+{len(self.sizes) - top} more sizes)"
        lines.append("modes: " + ", ".join(f"{k} {n:,}" for k, n in self.modes.most_common()))
        lines.append(f"unreadable files: {len(self.bad)}")
        lines += [f"  {escape(p)}: {escape(r)}" for p, r in self.bad[:top]]
        if self.mean:
            fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"  # noqa: E731
            lines.append(f"mean {fmt(self.mean)}, std {fmt(self.std)} ({self.channels}, pixel values 0-1)")
        return "\n".join(lines)


def _header(data: bytes) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """``(size, mode, error)`` from a file's header, without decoding it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size, im.mode, None
    except Exception as e:  # noqa: BLE001  # any unreadable file is a row of the report, not a crash
        return None, None, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def stats_config(data: str | Path, cfg: DataConfig) -> DataConfig:
    """``cfg`` reading ``data`` (a folder, or a list file) as its whole training set."""
    src = str(Path(data).expanduser())
    is_list = Path(src).is_file()
    return replace(cfg, train_data_root=None if is_list else src, train_list=src if is_list else None,
                   val_data_root=None, val_list=None, val_split=0.0, augment="none", random_erasing=0.0,
                   normalize="auto", cache=False,
                   fashion_mnist_root=cfg.fashion_mnist_root if cfg.dataset == "fashion-mnist" else None)


def dataset_stats(data: str | Path, cfg: DataConfig | None = None) -> DataStats:
    """The statistics of ``data``, read by the layout ``--dataset`` names or detects (any registered one)."""
    if not Path(data).expanduser().exists():
        raise DataError(f"{data}: no such folder or list file")
    cfg = stats_config(data, cfg or DataConfig())
    layout = get_layout(detect(cfg))
    if isinstance(layout, ImageLayout):
        files, _, names = layout.train_files(cfg)
        pre = layout.preprocess(names or ["a", "b"], cfg.image_size)
        out = DataStats(str(data), layout.name, names, dict.fromkeys(names, 0), channels=pre.mode)
        m = Moments()
        for path, label in files.samples:
            data, error = read_image_file(path)  # a regular file of a bounded size (a FIFO would hang PIL)
            size, mode, error = _header(data) if data is not None else (None, None, error)
            img, why = (decode_bytes(data, pre.mode) if data is not None and error is None else (None, error))
            if img is None:
                out.bad.append((path, why or "unreadable"))
                continue
            out.counts[names[label]] += 1
            out.sizes[size] += 1
            out.modes[mode] += 1
            m.add(img)
        if m.n:
            out.mean, out.std = m.result()
        return out
    bundle = layout.train_val(replace(cfg, image_size=layout.native_size or cfg.image_size))
    ds = bundle.train
    if not isinstance(ds, ArrayImages):
        raise TypeError(f"layout {layout.name}: stats reads image files or arrays, not {type(ds).__name__}")
    names = list(bundle.pre.classes)
    _, h, w, c = ds.pixels.shape
    good = [y for y, r in zip(ds.targets, ds.rows) if r >= 0]
    counts = Counter(names[y] for y in good)
    out = DataStats(str(data), layout.name, names, {n: counts.get(n, 0) for n in names},
                    Counter({(w, h): len(good)}), Counter({"L" if c == 1 else "RGB": len(good)}),
                    [(p, ds.errors.get(p, "unreadable")) for (p, _), r in zip(ds.samples, ds.rows) if r < 0],
                    channels="L" if c == 1 else "RGB")
    if good:
        out.mean, out.std = array_moments(ds)
    return out


def channel_mean(values: Sequence[float], chans: int) -> tuple[float, ...]:
    """Per-channel values for ``chans`` channels: as they are, or averaged into one for grayscale."""
    if len(values) == chans:
        return tuple(values)
    return (math.fsum(values) / len(values),) * chans
