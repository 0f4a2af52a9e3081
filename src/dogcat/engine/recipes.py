"""Training-recipe pieces, each a thin layer over timm: weight EMA, mixup/cutmix + label smoothing as one
``Criterion``, and ``--precision=auto`` (a short timed probe that picks fp32 or bf16/fp16)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..io import MalformedFile, atomic_write_text, read_json
from ..tracking.manifest import cpu_info, cpu_name
from .runtime import autocast, memory_format

log = logging.getLogger("dogcat")


# ---- EMA of the weights ---------------------------------------------------------------------------------

def build_ema(model: nn.Module, decay: float) -> Any:
    """timm's ``ModelEmaV3`` of the (unwrapped) model, or None when ``decay`` is 0."""
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


# ---- mixup / cutmix / label smoothing -------------------------------------------------------------------

class Criterion:
    """``criterion(images, labels) -> (images, targets)`` then ``criterion.loss(logits, targets)``.

    With mixup or cutmix, timm's ``Mixup`` mixes the batch and makes soft (smoothed) targets, scored by
    soft-target cross-entropy; it draws from numpy's global RNG, which checkpoints carry, so resume stays
    exact. An odd-sized batch (a last one) is not mixed: its targets are only smoothed.

    ``weight`` (``--class-weights``): per-class weights of the loss, as ``F.cross_entropy(weight=...)`` takes
    them: a weighted mean, each image weighing its class's weight. Soft targets get the same rule: an image's
    loss term and its share of the denominator are weighted by its target's weighted mass sum_c t_c w_c."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, weight: Sequence[float] | None = None) -> None:
        self.num_classes, self.smoothing = num_classes, label_smoothing
        self.weight = torch.tensor(list(weight), dtype=torch.float32) if weight is not None else None
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                                  num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup_fn is None:
            return images, labels
        if len(images) % 2 == 0:
            return self.mixup_fn(images.clone(), labels)  # it mixes in place: never into a loader's tensor
        from timm.data.mixup import one_hot

        off = self.smoothing / self.num_classes
        return images, one_hot(labels, self.num_classes, on_value=1.0 - self.smoothing + off, off_value=off)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = None
        if self.weight is not None:
            if self.weight.device != logits.device:  # moved once, not every step
                self.weight = self.weight.to(logits.device)
            w = self.weight
        if targets.dtype.is_floating_point:  # soft targets (timm's SoftTargetCrossEntropy)
            terms = -targets * F.log_softmax(logits.float(), dim=-1)
            if w is None:
                return terms.sum(-1).mean()
            # as cross_entropy's weighted mean: sum_i sum_c w_c t_ic (-log p_ic) / sum_i w_(y_i), where an image's
            # class weight w_(y_i) is, for a soft target, the weight of its (mixed, smoothed) label: sum_c w_c t_ic
            return (terms * w).sum() / (targets * w).sum().clamp_min(1e-12)
        if w is not None:  # a float32 weight needs float32 logits (bf16 ones outside an autocast region)
            logits = logits.float()
        return F.cross_entropy(logits, targets, weight=w, label_smoothing=self.smoothing)


def build_criterion(cfg: Config, num_classes: int, weight: Sequence[float] | None = None) -> Criterion:
    """The training loss of ``cfg``; ``weight``: the class weights ``--class-weights`` resolved to (or None)."""
    o = cfg.optim
    return Criterion(num_classes, o.label_smoothing, o.mixup, o.cutmix, weight)


# ---- --precision=auto -----------------------------------------------------------------------------------

def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dogcat" / "precision.json"


def _entry_ok(entry: Any) -> bool:
    seconds = entry.get("seconds") if isinstance(entry, dict) else None
    return isinstance(seconds, dict) and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                             for v in seconds.values())


def read_cache(path: Path) -> dict[str, Any]:
    """The probe cache: ``{key: {"seconds": {precision: s}}}``. A damaged file (not JSON, or another shape) is
    a cache, not an input: one warning naming it, then it is rebuilt; wrong-shaped entries are dropped."""
    try:
        cache = read_json(path, "precision cache", limit=16 << 20)
    except FileNotFoundError:
        return {}
    except MalformedFile as e:
        log.warning(f"{e}; starting it again")
        return {}
    return {k: v for k, v in cache.items() if _entry_ok(v)}


def candidates(device: torch.device) -> tuple[str, ...]:
    """fp32, plus the half precision this device runs natively: bf16 on CPUs with bf16 instructions
    (AVX-512 BF16 / AMX; elsewhere it is emulated and slow), bf16 or else fp16 on CUDA."""
    if device.type == "cuda":
        return ("fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ("fp32", "bf16")
    return ("fp32",)


def _zen(family: int, model: int) -> str | None:
    """AMD's core generation from /proc/cpuinfo's family and model (the marketing name often omits it)."""
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 26:
        return "Zen 5"
    return None


def cpu_kind() -> str:
    """This CPU for a benchmark line: model name, AMD core generation, and whether bf16 is native (what
    ``--precision=auto`` goes by), e.g. ``AMD EPYC (Zen 4), native bf16 (avx512_bf16)``."""
    info, name = cpu_info(), cpu_name()
    gen = None
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family", "").isdigit():
        gen = _zen(int(info["cpu family"]), int(info.get("model", "0") or 0))
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in info.get("flags", "").split()]
    native = "bf16" in candidates(torch.device("cpu"))
    bf16 = f"native bf16 ({', '.join(flags) or 'oneDNN'})" if native else "no native bf16 (fp32 only)"
    return f"{name}{f' ({gen})' if gen else ''}, {bf16}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}t"


def _time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, steps: int) -> float:
    """Seconds per forward+backward step, after one warm-up step."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for i in range(steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        with autocast(x.device, precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t0) / steps


def choose_precision(model: nn.Module, device: torch.device, shape: tuple[int, int, int], batch: int,
                     channels_last: bool, name: str, num_classes: int, steps: int = 3,
                     options: tuple[str, ...] | None = None) -> tuple[str, dict[str, Any]]:
    """The fastest of ``options`` (default: :func:`candidates`) for a training step of this model, input
    ``shape`` (C, H, W), batch and layout, timed on a copy of the model (the original, its BatchNorm
    statistics and the RNGs are untouched) and cached per (model, device, size, batch, layout).
    Returns the choice and what was measured (seconds per step by precision)."""
    options = options or candidates(device)
    key = f"{name}|{_device_name(device)}|{'x'.join(map(str, shape))}|b{batch}|cl{int(channels_last)}"
    path = cache_file()
    cache = read_cache(path)
    hit = cache.get(key)
    if hit and set(hit["seconds"]) >= set(options):
        choice = min(options, key=lambda p: hit["seconds"][p])
        return choice, {"key": key, "seconds": hit["seconds"], "cached": True}
    if len(options) == 1:
        return options[0], {"key": key, "seconds": {}, "cached": False,
                            "reason": f"no native half precision on {_device_name(device)}"}
    probe = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=g).to(device, memory_format=memory_format(channels_last))
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout draws
        seconds = {p: _time_steps(probe, x, y, p, steps) for p in options}
    del probe
    cache[key] = {"seconds": seconds, "time": time.time()}
    try:
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError as e:  # a read-only home: the choice still stands, it is just not remembered
        log.warning(f"could not write {path}: {e}")
    return min(options, key=lambda p: seconds[p]), {"key": key, "seconds": seconds, "cached": False}
