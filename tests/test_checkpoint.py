"""Checkpoints you can trust: exact resume, signals, kill -9, corrupt files, retention, refused changes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datagen import tiny_options
from dogcat import ConfigError, load_config, train
from dogcat.data import ResumableSampler, SeededItems
from dogcat.engine.checkpoint import Checkpoints, load_checkpoint

VOLATILE = {"time", "images_per_s", "train_images_per_s", "epoch_seconds"}


def base(fmnist_dir: Path, runs: Path, **kw) -> dict:
    """The tiny Fashion-MNIST run these tests cut and resume: 2 epochs, AdamW, cosine with warm-up, and the
    loader's default worker processes (resume must hold with them)."""
    return tiny_options(fmnist_dir, runs, **{"max_epoch": 2, "print_freq": 3, "deterministic": True,
                                             "optimizer": "adamw", "scheduler": "cosine", "warmup_epochs": 0.3,
                                             "num_workers": -1, **kw})


def logged(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") != "event"]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_equals_uninterrupted(fmnist_dir, tmp_path, workers):
    """160 training images, batch 16: 10 steps an epoch. Stops mid-epoch (4), at the last batch of an
    epoch before its validation (10), mid-epoch again (15); then runs to the end."""
    ref = train(load_config(base(fmnist_dir, tmp_path, num_workers=workers, env="ref")))
    run = tmp_path / "cut"
    first = train(load_config(base(fmnist_dir, tmp_path, num_workers=workers, env="cut", max_steps=4)))
    assert first.stopped and (run / "status").read_text().strip() == "stopped"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["state"]["epoch"], ck["state"]["batch_in_epoch"], ck["state"]["global_step"]) == (0, 4, 4)
    for max_steps in (10, 15, None):
        cfg = load_config({"resume": str(run), "max_steps": max_steps}, config_file=run / "config.yaml")
        train(cfg)
    assert (run / "status").read_text().strip() == "finished"
    a, b = weights(ref.run_dir), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged(ref.run_dir) == logged(run)


def as_format_2(ckpt: dict) -> dict:
    """A checkpoint in the layout dogcat wrote up to format 2: the counters and world_size as top-level keys,
    ``ema`` None when off, no base lr in the schedule's state."""
    old = {k: v for k, v in ckpt.items() if k != "state"}
    old.update(ckpt["state"], format_version=2, ema=ckpt.get("ema"))
    old["scheduler"] = {k: v for k, v in ckpt["scheduler"].items() if k != "lr"}
    return old


def test_a_format_2_checkpoint_resumes_exactly_and_takes_a_new_lr(fmnist_dir, tmp_path):
    """A run cut at step 4 whose last.pt is rewritten the old way resumes to the uninterrupted run's weights;
    with another --lr the old and the new layout resume to the same weights (the old lr comes from the
    old checkpoint's config)."""
    opts = base(fmnist_dir, tmp_path, num_workers=0, max_epoch=1)
    ref = train(load_config({**opts, "env": "ref"}))
    train(load_config({**opts, "env": "cut", "max_steps": 4}))
    runs = {name: tmp_path / name for name in ("old", "old-lr", "new-lr")}
    for name, run in runs.items():
        shutil.copytree(tmp_path / "cut", run)
        if name.startswith("old"):
            last = run / "checkpoints" / "last.pt"
            torch.save(as_format_2(torch.load(last, weights_only=True)), last)
        lr = {"lr": 0.001} if name.endswith("lr") else {}
        train(load_config({"resume": str(run), "max_steps": None, **lr}, config_file=run / "config.yaml"))
        assert load_checkpoint(run / "checkpoints" / "last.pt")["format_version"] == 3
    a, b = weights(ref.run_dir), weights(runs["old"])
    assert all(torch.equal(a[k], b[k]) for k in a) and logged(ref.run_dir) == logged(runs["old"])
    c, d = weights(runs["old-lr"]), weights(runs["new-lr"])
    assert all(torch.equal(c[k], d[k]) for k in c) and not all(torch.equal(a[k], c[k]) for k in a)


def test_sampler_resumes_without_touching_earlier_items():
    seen: list[int] = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            seen.append(i)
            return torch.rand(1).item()

    s = ResumableSampler(20, seed=1)
    s.set_epoch(3)
    full = [SeededItems(Counting())[k] for k in s]
    order = list(seen)
    seen.clear()
    s.set_epoch(3, start=12)
    tail = [SeededItems(Counting())[k] for k in s]
    assert seen == order[12:] and tail == full[12:]  # same items, same augmentation draws


def _spawn(fmnist_dir: Path, runs: Path, *extra: str) -> subprocess.Popen:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in base(fmnist_dir, runs, max_epoch=60, num_workers=0).items()
            if v is not None] + ["--env=sub", "--debug-file=None", *extra]
    return subprocess.Popen([sys.executable, "-m", "dogcat", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _steps(run: Path) -> int:
    p = run / "metrics.jsonl"
    return sum('"kind": "step"' in line for line in p.read_text().splitlines()) if p.exists() else 0


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_sigterm_saves_stops_143_and_resumes(fmnist_dir, tmp_path):
    run = tmp_path / "sub"
    proc = _spawn(fmnist_dir, tmp_path)
    _wait_for(lambda: _steps(run) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert (run / "status").read_text().strip() == "stopped" and "--resume" in err
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["state"]["global_step"] >= 6  # print_freq 3: two step records seen before the signal
    result = train(load_config({"resume": str(run), "max_epoch": ck["state"]["epoch"] + 1}, config_file=run / "config.yaml"))
    assert (run / "status").read_text().strip() == "finished" and result.history[-1]["epoch"] == ck["state"]["epoch"] + 1


def test_sigkill_at_any_moment_leaves_a_resumable_run(fmnist_dir, tmp_path):
    run = tmp_path / "sub"
    proc = _spawn(fmnist_dir, tmp_path, "--save-every-steps=1")
    _wait_for(lambda: _steps(run) >= 4, proc)
    proc.kill()
    proc.wait()
    assert (run / "status").read_text().strip() == "running"  # nobody could write otherwise
    ck = load_checkpoint(run / "checkpoints" / "last.pt")  # whole, whatever the moment
    result = train(load_config({"resume": str(run), "max_epoch": ck["state"]["epoch"] + 1}, config_file=run / "config.yaml"))
    assert (run / "status").read_text().strip() == "finished" and result.history
    assert not list((run / "checkpoints").glob(".*tmp*"))
    steps = [r["step"] for r in logged(run) if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # no duplicated steps from the killed run's unsaved tail


@pytest.fixture
def finished(fmnist_dir, tmp_path):
    return train(load_config(base(fmnist_dir, tmp_path, env="done", monitor="val_loss", keep_top_k=2,
                                  save_every_epochs=2, max_epoch=3)))


def test_truncated_last_falls_back_with_warning(finished):
    run = finished.run_dir
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # a new inode: the hard links (best, top-k) keep the good bytes
    last.write_bytes(data[: len(data) // 2])
    (run / "checkpoints" / ".last.pt.tmp-999").write_bytes(b"half a write")
    with pytest.warns(UserWarning, match=r"last\.pt is unreadable.*resuming from .*checkpoints/"):
        train(load_config({"resume": str(run), "max_epoch": 4}, config_file=run / "config.yaml"))
    assert load_checkpoint(last)["state"]["epoch"] == 4
    assert not (run / "checkpoints" / ".last.pt.tmp-999").exists()


def test_top_k_and_archive_after_resume(finished):
    run = finished.run_dir
    train(load_config({"resume": str(run), "max_epoch": 5}, config_file=run / "config.yaml"))
    losses = {r["epoch"]: r["val_loss"] for r in logged(run) if r["kind"] == "epoch"}
    assert sorted(losses) == [1, 2, 3, 4, 5]
    want = sorted(losses, key=lambda e: (losses[e], e))[:2]
    top = Checkpoints(run / "checkpoints", "val_loss").top()
    assert [load_checkpoint(p)["state"]["epoch"] for p in top] == want
    assert load_checkpoint(run / "checkpoints" / "best.pt")["state"]["epoch"] == want[0]
    assert {p.name for p in (run / "checkpoints").glob("epoch-*.pt")} == {"epoch-0002.pt", "epoch-0004.pt"}


def test_resume_refuses_other_experiments(finished):
    run = finished.run_dir
    with pytest.raises(ConfigError, match=r"--batch-size \(16 -> 32\).*--model \('smallcnn' -> 'resnet18'\)"):
        train(load_config({"resume": str(run), "batch_size": 32, "model": "resnet18"}, config_file=run / "config.yaml"))
    r = train(load_config({"resume": "latest", "runs_root": str(run.parent), "max_epoch": 4, "lr": 0.001},
                          config_file=run / "config.yaml"))
    event = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"resume"' in x][-1]
    assert event["changed"] == {"max_epoch": [3, 4], "lr": [0.003, 0.001]} and r.history[-1]["epoch"] == 4
