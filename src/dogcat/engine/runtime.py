"""Where and how a model runs (:class:`Runtime`), device choice, seeding, autocast: what every loop needs."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from typing import ContextManager

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from .distributed import Dist

log = logging.getLogger("dogcat")


@dataclass(frozen=True)
class Runtime:
    """What running a model needs, training or not: the device, the precision (``fp32`` / ``bf16`` /
    ``fp16``), the memory layout and the process group (one process: ``Dist()``)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    dist: Dist = field(default_factory=Dist)

    def place(self, images: torch.Tensor) -> torch.Tensor:
        """Images on the device, in the layout; ``non_blocking`` overlaps the copy with compute on CUDA."""
        return images.to(self.device, non_blocking=True, memory_format=memory_format(self.channels_last))

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.place(images), labels.to(self.device, non_blocking=True)

    def autocast(self) -> ContextManager:
        return autocast(self.device, self.precision)


ACCELERATORS = ("cuda", "mps", "xpu")  # what --device=auto tries, in this order, before the CPU
_logged: set[str] = set()


def accelerator_count(kind: str) -> int:
    """Devices of ``kind`` (cuda, mps, xpu) this process can use; 0 where torch has no such backend."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    xpu = getattr(torch, "xpu", None)
    return xpu.device_count() if xpu is not None and xpu.is_available() else 0


def pick_device(cfg: TrainConfig) -> torch.device:
    """``auto``: the first of CUDA, MPS (Apple) and XPU (Intel) that is available, when ``use_gpu``; else the CPU.
    The choice is logged once a process. An explicit ``cuda[:N]``, ``mps`` or ``xpu[:N]`` must exist here."""
    if cfg.device == "auto":
        found = next((k for k in ACCELERATORS if cfg.use_gpu and accelerator_count(k)), None)
        why = ("--use-gpu=false" if not cfg.use_gpu else "no CUDA, MPS or XPU") if found is None else "auto"
        dev = torch.device(found or "cpu")
        if f"{dev}:{why}" not in _logged:
            _logged.add(f"{dev}:{why}")
            log.info(f"device: {dev} ({why})")
        return dev
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", *ACCELERATORS):
        raise ConfigError(f"option --device={cfg.device!r} is not a device: allowed are auto, cpu, cuda, cuda:N, mps, "
                          "xpu, xpu:N")
    if dev.type != "cpu":
        have = accelerator_count(dev.type)
        if have == 0:
            raise ConfigError(f"option --device={cfg.device} asks for {dev.type.upper()}, but no {dev.type.upper()} "
                              "device is available here (--device=auto picks what there is)")
        if (dev.index or 0) >= have:
            raise ConfigError(f"option --device={cfg.device}: there are {have} {dev.type.upper()} device(s) here, "
                              f"numbered 0 to {have - 1}")
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16/fp16 autocast on the given device, or nothing for fp32 (and an unresolved ``auto``)."""
    if precision in ("fp32", "auto"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
