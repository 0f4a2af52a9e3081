"""``dogcat ctl`` commands applied at a step boundary (:class:`Steering`), and the debug tools they use: per-layer
statistics, the debug dump, the interactive debugger."""

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

from ..config import LIVE, OPTIONS, Config, ConfigError, flag, load_config, parse_overrides, resolve_key, to_yaml
from ..console import escape
from ..control import Inbox
from ..io import atomic_write_bytes, atomic_write_text, safe_dir
from ..metrics import summary
from ..tracking.records import event_record
from .distributed import broadcast, unwrap
from .state import TrainState
from .step import Step

log = logging.getLogger("dogcat")


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
    atomic_write_text(out / "batch_ids.txt", "".join(f"{escape(i, keep_bytes=True)}\n" for i in ids))  # one a line
    snapshot = {"model": model.state_dict(), "grads": grad_map, "images": images.cpu(), "labels": labels.cpu(),
                "ids": list(map(str, ids))}
    atomic_write_bytes(out / "snapshot.pt", lambda f: torch.save(snapshot, f))
    return out


class Steering:
    """Reads the inbox at step boundaries and applies ``set``, ``save``, ``eval``, ``stop``, ``debug``.

    Rank 0 reads the inbox and broadcasts what it read, so every rank applies the same commands at the same
    step. ``set`` changes the config (every part reads its settings from there) plus the few parts that hold a
    value of their own: the schedule's base lr and horizon, the optimizer's weight decay."""

    def __init__(self, cfg: Config, step: Step, state: TrainState, run: Any, save: Callable[[], None],
                 validate_now: Callable[[], dict], request_stop: Callable[[], None]) -> None:
        self.cfg, self.step, self.state, self.run = cfg, step, state, run
        self.save, self.validate_now, self.request_stop = save, validate_now, request_stop
        self.dist = step.rt.dist
        self.inbox = Inbox(run.folder.control) if self.dist.main else None

    def __call__(self) -> None:
        commands = self.inbox.poll() if self.inbox is not None else []
        if self.dist.enabled:
            commands = broadcast(commands, self.dist)
        for name, command in commands:
            try:
                result = {"ok": True, **self.apply(command)}
            except (ConfigError, ValueError) as e:
                result = {"ok": False, "message": str(e)}
            except Exception as e:  # noqa: BLE001 - a command that fails is answered; the training goes on
                log.warning(f"ctl {command}: failed: {type(e).__name__}: {e}")
                result = {"ok": False, "message": f"failed: {type(e).__name__}: {e}"}
            result.update(step=self.state.global_step, epoch=self.state.epoch + 1)
            if self.inbox is not None:  # logged first: when `dogcat ctl` has its answer, the record is there
                self.run.log(event_record("control", command=command, **result))
                self.inbox.ack(name, result)
                log.info(f"ctl {command}: {result['message']}")

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()  # `dogcat ctl` now says: no process running

    def apply(self, command: str) -> dict[str, Any]:
        verb, _, arg = command.strip().partition(" ")
        if verb == "set":
            return self.set(arg)
        if verb == "save":
            self.save()
            return {"message": f"saved {self.run.ckpt_dir / 'last.pt'} at step {self.state.global_step}"}
        if verb == "eval":
            m = self.validate_now()
            return {"message": f"val {summary(m)}",
                    "metrics": {k: v for k, v in m.items() if k != "confusion"}}
        if verb == "stop":
            self.request_stop()
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
            raise ValueError(f"{flag(leaf)} cannot change while training; live options: "
                             f"{', '.join(LIVE)} (others: stop, then --resume)")
        sec = OPTIONS[leaf][0]
        new_cfg = load_config(parse_overrides([f"--{leaf}={raw}"]), base=self.cfg)  # validated like the CLI
        old, new = getattr(getattr(self.cfg, sec), leaf), getattr(getattr(new_cfg, sec), leaf)
        setattr(getattr(self.cfg, sec), leaf, new)
        scheduler = self.step.scheduler
        if leaf == "lr":  # the new base lr, at the schedule's current point (never a ratio of the old one)
            scheduler.set_base_lr(new)
        elif leaf == "weight_decay":
            for g in self.step.optimizer.param_groups:
                g["weight_decay"] = new
        elif leaf == "max_epoch":
            scheduler.total_steps = max(1, scheduler.steps_per_epoch * new)
        atomic_write_text(self.run.folder.config, to_yaml(self.cfg))
        return {"message": f"{leaf}: {old} -> {new}", "key": leaf, "old": old, "new": new}

    def debug(self) -> str:
        last = self.step.last
        if last is None:
            raise ValueError("no batch yet to debug on")
        if not self.dist.main:
            return "rank 0 debugs"
        model = unwrap(self.step.model)  # rank 0 alone runs this forward: the DDP wrapper would wait for the others
        if sys.stdin.isatty():
            return interactive(model, self.step.optimizer, last, last.loss, self.cfg)
        out = debug_dump(model, last.images, last.labels, last.ids,
                         safe_dir(self.run.path / "debug" / f"step-{self.state.global_step:07d}", top=self.run.path))
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
