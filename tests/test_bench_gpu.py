"""bench/gpu.py --smoke: the GPU bench's whole code path, tiny, on the CPU, so that the one run it gets on a
GPU machine does not fail on a renamed function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 15-20 s of training and a pytest subprocess: `make test-all`
def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", f"--out={out}", "--budget-s=170"],
                       capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out.read_text())
    assert {"tests", "data", "model", "loader", "e2e"} <= set(report["parts"])
    assert all(part["ok"] for part in report["parts"].values()), report["parts"]
    assert {"model_img_s", "loader_img_s", "e2e_img_s", "e2e_over_model"} <= set(report["figures"])
    assert report["meta"]["smoke"] and "skipped" in report["parts"]["tests"]["summary"]  # no CUDA here
