"""How long a command takes to start, against importing torch, measured in the same run.

The light commands (``--version``, ``help``, ``runs``, ``completion``) must not pay for torch: ``import dogcat``
loads no torch, timm or engine until a name needs it. Each round runs every command once, in turn (so a
neighbour's burst hits all alike), plus the baseline ``python -c "import torch"``; every figure is the mean ±
std over the rounds. ``dogcat train -c fashion-mnist --dry-run`` (two training and two validation batches,
checkpoints written and loaded back, nothing kept) is timed too, unless it fails (no Fashion-MNIST files).

    .venv/bin/python bench/startup.py [--rounds=5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _figures import mean_std, ratio_summary

BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dogcat = str(BIN / "dogcat")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DOGCAT_RUNS_ROOT": tmp}
        cmds = {"import torch (baseline)": [sys.executable, "-c", "import torch"],
                "dogcat --version": [dogcat, "--version"], "dogcat help": [dogcat, "help"],
                "dogcat runs": [dogcat, "runs"], "dogcat completion bash": [dogcat, "completion", "bash"]}
        cmds["dogcat train -c fashion-mnist --dry-run"] = [dogcat, "train", "-c", "fashion-mnist", "--dry-run", "-q"]
        for name, cmd in list(cmds.items()):  # a round not counted: the files into the page cache
            try:
                timed(cmd, env)
            except SystemExit as e:
                if "dry-run" not in name:
                    raise
                print(f"(the dry run is left out: {e})")
                del cmds[name]
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                times[name].append(timed(cmd, env))
    base = times["import torch (baseline)"]
    print(f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f} at the end")
    for name, ts in times.items():
        rel = "" if ts is base else f"; / import torch: {ratio_summary([t / b for t, b in zip(ts, base)], 'rounds')}"
        print(f"{name:<42} {mean_std(ts, '{:.2f}')} s{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
