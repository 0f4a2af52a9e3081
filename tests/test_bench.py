"""The CPU benches (bench/*.py), tiny: each runs its whole code path and prints its figures as mean ± std, so
that a renamed function or a figure printed without its spread is caught before someone spends an hour on
a real run. The figures themselves mean nothing at these sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPREAD = re.compile(r"\d ± (\d|nan)")  # every figure with its standard deviation


def bench(tmp_path: Path, script: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "HOME": str(tmp_path), "DOGCAT_RUNS_ROOT": str(tmp_path / "runs")}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@pytest.mark.slow  # ~1-2 minutes of tiny trainings: `make test-all`
def test_train_bench_prints_every_figure_with_its_spread(tmp_path):
    out = bench(tmp_path, "train.py", "--quick", "--only=b,c", "--seeds=2", "--b-variants", "--set", "augment=flip")
    assert "(b) dogcat default / template's way" in out and "(b) dogcat --compile / template's way" in out, out
    final = next(line for line in out.splitlines() if line.startswith("(c) recipe fashion-mnist augment=flip, 2 seeds"))
    assert len(SPREAD.findall(final)) == 4, final  # test accuracy, time, val accuracy, training loss
    assert re.search(r"\(c\) seed 1: 2 epochs", out), out


@pytest.mark.slow
def test_train_bench_refuses_a_malformed_set(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--set", "augment"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and "--set 'augment': expected KEY=VALUE" in p.stderr, p.stderr


@pytest.mark.slow
def test_the_other_benches_print_mean_and_std(tmp_path):
    out = bench(tmp_path, "data.py", "--images=96", "--batch-size=16", "--rounds=2")
    assert len([ln for ln in out.splitlines() if re.match(r"[bc]/[acd] ", ln) and SPREAD.search(ln)]) == 6, out
    out = bench(tmp_path, "per_image.py", "--images=24", "--pool=96", "--rounds=2")
    assert re.search(r"simplejpeg +[\d.]+ ± [\d.]+ ms an image", out) and "PIL / simplejpeg: " in out, out
    assert re.search(r"--augment=randaugment +[\d.]+ ± [\d.]+ ms an image", out), out
    out = bench(tmp_path, "precision.py", "--rounds=2", "--steps=1", "--models=smallcnn:28:1:8")
    assert re.search(r"bf16 speed-up \(contiguous\): [\d.]+ ± ", out) and "channels_last speed-up (fp32): " in out, out
    out = bench(tmp_path, "finetune.py", "--pairs=2", "--epochs=1", "--images=16", "--size=32")
    assert SPREAD.search(out.split("speed-up:")[1]), out
    out = bench(tmp_path, "startup.py", "--rounds=2")
    assert re.search(r"dogcat --version +[\d.]+ ± [\d.]+ s; / import torch: [\d.]+ ± ", out), out
    pytest.importorskip("optuna")
    out = bench(tmp_path, "sweep_storage.py", "2", "2", "2", "0", "2")
    assert out.count("study opens 2 of 2") == 6, out
