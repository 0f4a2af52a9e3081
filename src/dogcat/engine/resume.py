"""What exact resume needs besides state_dicts: every RNG's state (:class:`RngStates`, a checkpoint part),
and which options may change (:data:`RESUMABLE`, derived from each option's facts in config/options.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..config import OPTIONS, RESUMABLE, Config, ConfigError, flag, to_dict
from . import distributed
from .distributed import Dist



def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and every CUDA device's generator, as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngStates:
    """Every rank's RNGs as a checkpoint part: ``state_dict`` gathers them (collective under DDP), so a resume
    with the same number of processes puts each rank's back exactly; with another number rank r takes rank
    (r mod the old number)'s."""

    def __init__(self, d: Dist) -> None:
        self.dist = d

    def state_dict(self) -> list[dict[str, Any]]:
        return distributed.gather(rng_state(), self.dist)

    def load_state_dict(self, ranks: list[dict[str, Any]]) -> None:
        set_rng_state(ranks[self.dist.rank % len(ranks)])


def resume_changes(saved: dict[str, Any], cfg: Config) -> dict[str, list]:
    """``{option: [old, new]}`` for the options that differ; refuses those not in RESUMABLE."""
    new, defaults = to_dict(cfg), to_dict(Config())
    old = {sec: v if isinstance(v := saved.get(sec), dict) else {} for sec in new}  # a checkpoint is data
    # an option the checkpoint's dogcat did not have yet ran as its default
    was = {leaf: old[sec].get(leaf, defaults[sec][leaf]) for leaf, (sec, _) in OPTIONS.items()}
    changed = {leaf: [was[leaf], new[sec][leaf]] for leaf, (sec, _) in OPTIONS.items() if was[leaf] != new[sec][leaf]}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE}
    if refused:
        what = ", ".join(f"{flag(k)} ({v[0]!r} -> {v[1]!r})" for k, v in refused.items())
        raise ConfigError(f"cannot change on resume: {what}. Options that may change: "
                          f"{', '.join(sorted(RESUMABLE - {k for k, (s, _) in OPTIONS.items() if s == 'eval'}))}; "
                          "start a new run (--load-model-path=RUN/checkpoints/last.pt) to change the others")
    return {k: v for k, v in changed.items() if k not in ("resume",)}
