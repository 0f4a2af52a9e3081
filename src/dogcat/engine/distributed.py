"""Many processes through PyTorch's own engine: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, we join.

One process per device (or CPU share); gloo on the CPU, nccl on GPUs. Rank 0 alone writes the run folder;
the others compute, take part in the collectives below, and read what rank 0 decided.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..processes import Dist  # defined below the engine, so that tracking can be told it too


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (a no-op for one process); returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def shutdown(d: Dist) -> None:
    """Leave the process group and let its threads end while Python is still fully alive.

    ``destroy_process_group`` leaves gloo's worker threads running as long as the DDP wrapper holds the
    group, and the wrapper can sit in reference cycles that only the collector frees. At interpreter exit a
    worker thread releasing the last collective's tensors then needs the GIL and aborts
    the process ("terminate called without an active exception", pytorch#190489; about one 2-process run
    in 15 here). Collecting now runs the group's destructor, which joins those threads."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def wrap(model: nn.Module, d: Dist, device: torch.device, sync_bn: bool) -> nn.Module:
    """DDP around the model (SyncBatchNorm first when asked); the model itself for one process."""
    if not d.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module: checkpoints hold its state_dict, so they load in one process without ``module.``."""
    return model.module if isinstance(model, DDP) else model


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def any_true(flag: bool, d: Dist, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (a signal may reach one process only)."""
    if not d.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def launch_command(nproc: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and environment of :func:`launch`. ``python -m`` would put the current folder
    first on ``sys.path``, so a ``dogcat/`` or ``torch.py`` lying there would run instead of ours: ``-P`` and
    ``PYTHONSAFEPATH`` (inherited by the workers torchrun starts) keep it off (Python 3.11+)."""
    safe = sys.version_info >= (3, 11)
    cmd = [sys.executable, *(["-P"] if safe else []), "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "dogcat", "train", *argv]
    env = {**os.environ, **({"PYTHONSAFEPATH": "1"} if safe else {})}
    return cmd, env


def launch(nproc: int, argv: list[str]) -> int:
    """``dogcat train --nproc=N``: re-run this command under torchrun with N processes on this machine."""
    cmd, env = launch_command(nproc, argv)
    print("launching:", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)
