"""Where and how a model runs (:class:`Runtime`), device choice, seeding, autocast: what every loop needs."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import ContextManager

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from .distributed import Dist


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


def pick_device(cfg: TrainConfig) -> torch.device:
    """``auto``: CUDA when available and ``use_gpu``; else the CPU. An explicit CUDA device must exist."""
    if cfg.device == "auto":
        return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(cfg.device)
    except RuntimeError as e:
        raise ConfigError(f"option --device={cfg.device!r} is not a device (auto, cpu, cuda, cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"option --device={cfg.device} asks for CUDA, but no CUDA device is available here")
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
