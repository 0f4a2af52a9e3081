"""Steering a running job: dogcat ctl against a real training process; the non-finite guard."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datagen import tiny_options
from dogcat import load_config, train
from dogcat.cli import main
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.step import NonFinite
from dogcat.models import register
from dogcat.models.smallcnn import SmallCNN


def opts(fmnist_dir: Path, runs: Path, **kw) -> dict:
    return tiny_options(fmnist_dir, runs, **kw)


def events(run: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("event") == event]


def ctl(run: Path, *words: str, capsys) -> tuple[int, str]:
    code = main(["ctl", str(run), *words, "--timeout=60"])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_ctl_drives_a_running_training(fmnist_dir, tmp_path, capsys):
    run = tmp_path / "live"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in opts(fmnist_dir, tmp_path, max_epoch=500).items()]
    proc = subprocess.Popen([sys.executable, "-m", "dogcat", "train", *args, "--env=live"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run / "control" / "pid").exists():
            assert proc.poll() is None and time.time() - t0 < 60, proc.communicate()
            time.sleep(0.05)

        code, out = ctl(run, "set", "lr=0.0005", capsys=capsys)
        assert code == 0 and "lr: 0.003 -> 0.0005" in out, out
        step = events(run, "control")[-1]["step"]
        later: list[dict] = []
        t0 = time.time()
        while len(later) < 2 and time.time() - t0 < 60:  # the next step records, however slow the machine
            time.sleep(0.1)
            later = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if r.get("kind") == "step" and r["step"] > step]
        assert later and all(r["lr"] == pytest.approx(0.0005) for r in later)

        code, out = ctl(run, "set", "batch_size=3", capsys=capsys)
        assert code == 2 and "cannot change while training" in out and "max_epoch" in out

        code, out = ctl(run, "save", capsys=capsys)
        saved = events(run, "control")[-1]["step"]
        assert code == 0 and load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] >= saved

        code, out = ctl(run, "eval", capsys=capsys)
        assert code == 0 and "val loss" in out
        assert events(run, "control")[-1]["metrics"]["count"] == 40

        code, out = ctl(run, "debug", capsys=capsys)
        dump = next((run / "debug").iterdir())
        assert code == 0 and "no terminal" in out
        layers = json.loads((dump / "layers.json").read_text())
        assert layers["activations"] and all("grad_std" in p for p in layers["parameters"])
        assert len((dump / "batch_ids.txt").read_text().split()) == 16
        assert main(["inspect", str(dump / "snapshot.pt")]) == 0
        assert "grad std" in capsys.readouterr().out

        code, out = ctl(run, "stop", capsys=capsys)
        assert code == 0 and "stopping" in out
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert (run / "status").read_text().strip() == "stopped"
    code, out = ctl(run, "eval", capsys=capsys)
    assert code == 1 and "no training process is running" in out and "stopped" in out
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["config"]["optim"]["lr"] == 0.0005  # the change is part of the run's record
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    assert "events/control/text_summary" in acc.Tags()["tensors"]  # and of its TensorBoard, as text
    result = train(load_config({"resume": str(run), "max_epoch": ck["state"]["epoch"] + 1}, config_file=run / "config.yaml"))
    assert result.history and (run / "status").read_text().strip() == "finished"
    code, out = ctl(run, "stop", capsys=capsys)
    assert code == 1 and "finished" in out


class NaNAfter(SmallCNN):
    """Outputs NaN on training forwards number ``start`` .. ``stop`` (1-based)."""

    window = (3, 3)
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            NaNAfter.calls += 1
            if self.window[0] <= NaNAfter.calls <= self.window[1]:
                out = out * float("nan")
        return out


@pytest.fixture
def nan_model():
    """Registers the NaN-injecting model for one test only (its shape equals smallcnn's, which would
    confuse other tests' architecture guesses)."""
    from dogcat.models.registry import _REGISTRY

    register("nan-after", "test model")(lambda num_classes, in_chans=1, pretrained=None: NaNAfter(num_classes, in_chans))
    yield
    _REGISTRY.pop("nan-after", None)


def _nan_run(fmnist_dir, tmp_path, window, **kw):
    NaNAfter.calls, NaNAfter.window = 0, window
    return load_config(opts(fmnist_dir, tmp_path, model="nan-after", max_epoch=1, save_every_steps=1, **kw))


def test_nonfinite_stop_keeps_last_good_checkpoint(fmnist_dir, tmp_path, nan_model):
    cfg = _nan_run(fmnist_dir, tmp_path, (3, 3), env="stop")
    with pytest.raises(NonFinite, match=r"at step 3 .*first layer with a non-finite gradient: features\.0\.0\.weight"):
        train(cfg)
    run = tmp_path / "stop"
    assert (run / "status").read_text().strip() == "failed"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["state"]["global_step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                          if v.is_floating_point())


def test_nonfinite_skip_and_too_many_in_a_row(fmnist_dir, tmp_path, nan_model):
    result = train(_nan_run(fmnist_dir, tmp_path, (3, 4), env="skip", nonfinite="skip", nonfinite_max_skips=3))
    assert len(events(result.run_dir, "nonfinite_skip")) == 2
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["state"]["global_step"] == 10 - 2
    with pytest.raises(NonFinite, match="3 non-finite batches in a row"):
        train(_nan_run(fmnist_dir, tmp_path, (3, 99), env="many", nonfinite="skip", nonfinite_max_skips=3))
