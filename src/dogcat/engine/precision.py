"""``--precision=auto``: a short timed probe of this model's training step in fp32 and in the device's native
half precision picks the faster, cached per (model, device, size, batch, layout)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hardware import cpu_bf16_native
from ..io import MalformedFile, atomic_write_text
from ..jsonfiles import read_json
from .runtime import autocast, memory_format

log = logging.getLogger("dogcat")


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
    if device.type == "cpu" and cpu_bf16_native():
        return ("fp32", "bf16")
    return ("fp32",)


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
