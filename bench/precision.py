"""bf16 autocast against fp32, and channels_last against the default memory format, for a training step on this
CPU, as ratios of step times alternated in the same run (mean ± std over rounds).

What ``--precision=auto`` decides per run with a three-step probe (``engine/precision.py``), measured here with
more steps and rounds: for each model, one round times a forward + backward + AdamW step in the four ways
(fp32 / bf16 x contiguous / channels_last), in turn, on synthetic data. On a CPU without native bf16
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` false: no AVX-512 BF16 or AMX) bf16 is emulated, and auto
runs fp32 without timing it; this bench times it anyway.

    .venv/bin/python bench/precision.py [--rounds=5] [--steps=10] [--models=fastcnn:28:1:256,resnet18:112:3:32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from _figures import mean_std, ratio_summary
from dogcat.hardware import cpu_kind
from dogcat.models import build_model

WAYS = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))


def step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 precision: str, steps: int) -> float:
    """Seconds per training step, after one warm-up step."""
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", default="fastcnn:28:1:256,resnet18:112:3:32",
                    help="NAME:SIZE:CHANNELS:BATCH, comma-separated")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_kind()}; {args.rounds} rounds of "
          f"{args.steps} steps a way", flush=True)
    for spec in args.models.split(","):
        name, size, chans, batch = spec.split(":")
        size, chans, batch = int(size), int(chans), int(batch)
        torch.manual_seed(0)
        x = torch.randn(batch, chans, size, size)
        y = torch.randint(0, 10, (batch,))
        setups = {}
        for precision, cl in WAYS:
            fmt = torch.channels_last if cl else torch.contiguous_format
            model = build_model(name, 10, chans).to(memory_format=fmt).train()
            setups[precision, cl] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                                     x.contiguous(memory_format=fmt))
        times: dict[tuple[str, bool], list[float]] = {w: [] for w in WAYS}
        for _ in range(args.rounds):
            for w, (model, opt, xx) in setups.items():
                times[w].append(step_seconds(model, opt, xx, y, w[0], args.steps))
        print(f"{name} at {size}x{size}x{chans}, batch {batch} (load average {os.getloadavg()[0]:.2f}):")
        for (precision, cl), ts in times.items():
            print(f"  {precision} {'channels_last' if cl else 'contiguous':<13} "
                  f"{mean_std([t * 1e3 for t in ts], '{:.1f}')} ms a step")
        for cl in (False, True):
            r = [a / b for a, b in zip(times["fp32", cl], times["bf16", cl])]
            print(f"  bf16 speed-up ({'channels_last' if cl else 'contiguous'}): {ratio_summary(r, 'rounds')}")
        for p in ("fp32", "bf16"):
            r = [a / b for a, b in zip(times[p, False], times[p, True])]
            print(f"  channels_last speed-up ({p}): {ratio_summary(r, 'rounds')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
