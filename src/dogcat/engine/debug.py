"""Debug tools of a running training (``dogcat ctl RUN debug``, the debug trigger file) and of ``dogcat inspect``:
per-layer statistics, the debug dump, the interactive debugger."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..console import escape
from ..io import atomic_write_bytes, atomic_write_text, safe_dir
from ..models.freeze import train_mode
from .distributed import unwrap
from .step import TrainStep


def layer_stats(model: nn.Module, grads: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Per-parameter mean / std / abs-max (and the gradient's), the template's way to find a layer gone wrong."""
    rows = []
    for name, p in model.named_parameters() if isinstance(model, nn.Module) else model.items():
        if p.numel() == 0:
            continue  # nothing to describe (and max() of nothing raises)
        t = p.detach().float()
        row = {"name": name, "shape": list(t.shape), "mean": t.mean().item(),
               "std": t.std().item() if t.numel() > 1 else 0.0, "absmax": t.abs().max().item(),
               "finite": bool(torch.isfinite(t).all())}
        g = (grads or {}).get(name)
        if isinstance(g, torch.Tensor) and g.numel():
            g = g.float()
            row.update(grad_mean=g.mean().item(), grad_std=g.std().item() if g.numel() > 1 else 0.0,
                       grad_absmax=g.abs().max().item(), grad_finite=bool(torch.isfinite(g).all()))
        rows.append(row)
    return rows


def debug_dump(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ids: list[str], out: Path) -> Path:
    """Per-layer activation and gradient statistics on ``images``, the batch's ids and a snapshot, written
    to ``out``. Eval mode, gradients via ``autograd.grad`` and a forked RNG: the training is not disturbed."""
    acts: dict[str, dict[str, float]] = {}

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, inp: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                o = output.detach().float()
                acts[name] = {"type": type(mod).__name__, "mean": o.mean().item(), "std": o.std().item(),
                              "absmax": o.abs().max().item(), "finite": bool(torch.isfinite(o).all())}
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            loss = F.cross_entropy(model(images), labels)
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        train_mode(model, was_training)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grad_map = {n: g for n, g in zip(names, grads) if g is not None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "layers.json", json.dumps({"loss": loss.item(), "activations": acts,
                                                       "parameters": layer_stats(model, grad_map)}, indent=1))
    atomic_write_text(out / "batch_ids.txt", "".join(f"{escape(i, keep_bytes=True)}\n" for i in ids))  # one a line
    snapshot = {"model": model.state_dict(), "grads": grad_map, "images": images.cpu(), "labels": labels.cpu(),
                "ids": list(map(str, ids))}
    atomic_write_bytes(out / "snapshot.pt", lambda f: torch.save(snapshot, f))
    return out


def debug_step(step: TrainStep, cfg: Config, out: Path, main: bool = True, top: Path | None = None) -> str:
    """Debug the last batch trained on: on a terminal stop in (i)pdb, otherwise write a debug dump to ``out``.
    Rank 0 alone does it, on the plain module (the DDP wrapper's forward would wait for the other ranks). With
    ``top`` (the run folder) the folders from there to ``out`` are made as the run's own (a link refused)."""
    last = step.last
    if last is None:
        raise ValueError("no batch yet to debug on")
    if not main:
        return "rank 0 debugs"
    model = unwrap(step.model)
    if sys.stdin.isatty():
        return interactive(model, step.optimizer, last, last.loss, cfg)
    debug_dump(model, last.images, last.labels, last.ids, safe_dir(out, top=top) if top is not None else out)
    return f"no terminal: wrote the debug dump {out} (layers.json, batch_ids.txt, snapshot.pt)"


def interactive(model: nn.Module, optimizer: Any, batch: Any, loss: Any, cfg: Config) -> str:
    """Stop in (i)pdb with the model, optimizer, batch, loss and config in scope; ``c`` continues."""
    try:
        import ipdb as debugger  # type: ignore[import-not-found]
    except ImportError:
        import pdb as debugger
    print("debugger: model, optimizer, batch, loss, cfg are in scope; 'c' continues training", flush=True)
    t0 = time.time()
    debugger.set_trace()
    return f"debugger session of {time.time() - t0:.0f}s"
