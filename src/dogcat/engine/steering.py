"""Applying ``dogcat ctl`` commands at a step boundary, the debug dump, and the non-finite guard."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import OPTIONS, Config, ConfigError, DogcatError, load_config, parse_overrides, resolve_key, to_yaml
from ..control import Inbox
from ..io import atomic_write_bytes, atomic_write_text
from .distributed import any_true, broadcast, unwrap

log = logging.getLogger("dogcat")

# Options a running job may change; anything else would need another setup (refused with this list).
LIVE = ("lr", "weight_decay", "clip_grad_norm", "print_freq", "max_epoch", "max_steps", "save_every_steps",
        "nonfinite", "nonfinite_max_skips")


class NonFinite(DogcatError, RuntimeError):
    """A NaN/Inf loss or gradient under ``--nonfinite=stop`` (or too many skipped in a row)."""

    exit_code = 3


def layer_stats(model: nn.Module, grads: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Per-parameter mean / std / abs-max (and the gradient's), the seed's way to find a layer gone wrong."""
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
        model.train(was_training)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grad_map = {n: g for n, g in zip(names, grads) if g is not None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "layers.json", json.dumps({"loss": loss.item(), "activations": acts,
                                                       "parameters": layer_stats(model, grad_map)}, indent=1))
    atomic_write_text(out / "batch_ids.txt", "\n".join(map(str, ids)) + "\n")
    snapshot = {"model": model.state_dict(), "grads": grad_map, "images": images.cpu(), "labels": labels.cpu(),
                "ids": list(map(str, ids))}
    atomic_write_bytes(out / "snapshot.pt", lambda f: torch.save(snapshot, f))
    return out


class Steering:
    """Reads the inbox at step boundaries and applies ``set``, ``save``, ``eval``, ``stop``, ``debug``."""

    def __init__(self, cfg: Config, parts: Any, run: Any, save: Callable[[], None],
                 validate_now: Callable[[], dict]) -> None:
        self.cfg, self.p, self.run, self.save, self.validate_now = cfg, parts, run, save, validate_now
        self.dist = parts.loop.dist
        self.inbox = Inbox(run.path) if self.dist.main else None  # rank 0 reads, then broadcasts

    def __call__(self) -> None:
        commands = self.inbox.poll() if self.inbox is not None else []
        if self.dist.enabled:  # every rank applies the same commands at the same step
            commands = broadcast(commands, self.dist)
        for name, command in commands:
            try:
                result = {"ok": True, **self.apply(command)}
            except (ConfigError, ValueError) as e:
                result = {"ok": False, "message": str(e)}
            except Exception as e:  # noqa: BLE001 - a command that fails is answered; the training goes on
                log.warning(f"ctl {command}: failed: {type(e).__name__}: {e}")
                result = {"ok": False, "message": f"failed: {type(e).__name__}: {e}"}
            result.update(step=self.p.loop.global_step, epoch=self.p.loop.epoch + 1)
            if self.inbox is not None:  # logged first: when `dogcat ctl` has its answer, the record is there
                self.run.log({"kind": "event", "event": "control", "command": command, **result})
                self.inbox.ack(name, result)
                log.info(f"ctl {command}: {result['message']}")

    def apply(self, command: str) -> dict[str, Any]:
        verb, _, arg = command.strip().partition(" ")
        loop = self.p.loop
        if verb == "set":
            return self.set(arg)
        if verb == "save":
            self.save()
            return {"message": f"saved {self.run.ckpt_dir / 'last.pt'} at step {loop.global_step}"}
        if verb == "eval":
            m = self.validate_now()
            return {"message": f"val loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f}, logloss {m['logloss']:.4f}",
                    "metrics": {k: v for k, v in m.items() if k != "confusion"}}
        if verb == "stop":
            loop.stop_requested = True
            return {"message": "stopping: checkpoint now, status 'stopped'; continue with --resume"}
        if verb == "debug":
            return {"message": self.debug()}
        raise ValueError(f"unknown command {command!r}; commands: set KEY=VALUE, save, eval, stop, debug")

    def set(self, arg: str) -> dict[str, Any]:
        key, eq, raw = arg.partition("=")
        if not eq:
            raise ValueError(f"set needs KEY=VALUE, got {arg!r}; live options: {', '.join(LIVE)}")
        leaf = resolve_key(key).split(".")[1]
        if leaf not in LIVE:
            raise ValueError(f"--{leaf.replace('_', '-')} cannot change while training; live options: "
                             f"{', '.join(LIVE)} (others: stop, then --resume)")
        sec = OPTIONS[leaf][0]
        new_cfg = load_config(parse_overrides([f"--{leaf}={raw}"]), base=self.cfg)
        old, new = getattr(getattr(self.cfg, sec), leaf), getattr(getattr(new_cfg, sec), leaf)
        setattr(getattr(self.cfg, sec), leaf, new)
        p, loop = self.p, self.p.loop
        if leaf == "lr":  # the new base lr, at the schedule's current point (never a ratio of the old one)
            p.scheduler.set_base_lr(new)
        elif leaf == "weight_decay":
            for g in p.optimizer.param_groups:
                g["weight_decay"] = new
        elif leaf == "max_epoch":
            loop.max_epoch = new
            p.scheduler.total_steps = max(1, p.scheduler.steps_per_epoch * new)
        else:  # plain loop settings of the same name
            setattr(loop, leaf, new)
        atomic_write_text(self.run.path / "config.yaml", to_yaml(self.cfg))
        return {"message": f"{leaf}: {old} -> {new}", "key": leaf, "old": old, "new": new}

    def debug(self) -> str:
        loop = self.p.loop
        if loop.last_batch is None:
            raise ValueError("no batch yet to debug on")
        images, labels, ids, loss = loop.last_batch
        if not self.dist.main:
            return "rank 0 debugs"
        model = unwrap(self.p.model)  # rank 0 alone runs this forward: the DDP wrapper would wait for the others
        if sys.stdin.isatty():
            return interactive(model, self.p.optimizer, loop.last_batch, loss, self.cfg)
        out = debug_dump(model, images, labels, ids, self.run.path / "debug" / f"step-{loop.global_step:07d}")
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


def check_finite(model: nn.Module, loss: torch.Tensor, scaler: torch.amp.GradScaler,
                 loop: Any) -> tuple[bool, torch.Tensor | None]:
    """At an optimizer step: (False, _) (skip the step) or NonFinite on a NaN/Inf loss or gradient.

    Also returns the gradients' total 2-norm when it was computed, so that --clip-grad-norm reuses it
    rather than computing it again. With fp16 loss scaling an inf gradient is the scaler's business (it
    skips that step and lowers the scale), so only the loss is checked then. On a GPU this costs one
    synchronisation per step."""
    bad, norm = not bool(torch.isfinite(loss.detach()).all()), None
    if not bad and not scaler.is_enabled():
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            bad = not bool(torch.isfinite(norm))
    bad = any_true(bad, loop.dist, loop.device)  # under DDP all ranks decide together
    if not bad:
        loop.nonfinite_in_a_row = 0
        return True, norm
    first = next((n for n, p in model.named_parameters()
                  if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
    where = (f"at step {loop.global_step + 1} (epoch {loop.epoch + 1}, batch {loop.batch}): loss "
             f"{loss.item():.4g}; first layer with a non-finite gradient: {first or 'none (the loss itself)'}")
    loop.nonfinite_in_a_row += 1
    loop.nonfinite_total += 1
    if loop.nonfinite == "skip" and loop.nonfinite_in_a_row < loop.nonfinite_max_skips:
        if loop.run is not None:
            loop.run.log({"kind": "event", "event": "nonfinite_skip", "step": loop.global_step,
                          "epoch": loop.epoch + 1, "batch": loop.batch, "first_layer": first})
        log.warning(f"non-finite {where}; batch skipped ({loop.nonfinite_in_a_row} in a row)")
        return False, None
    if loop.nonfinite == "skip":
        where += f"; {loop.nonfinite_in_a_row} non-finite batches in a row (--nonfinite-max-skips)"
    raise NonFinite(f"non-finite {where}. The last good checkpoint is kept; lower --lr, set --clip-grad-norm "
                    "or --nonfinite=skip, then --resume")
