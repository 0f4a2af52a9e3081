"""Class imbalance: --class-weights (auto / given) in the loss as computed by hand, and --sampler=balanced
(class frequencies, exact resume, DDP sharding)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from dogcat import load_config, train
from dogcat.cli import main
from dogcat.data import BalancedSampler, DataError, ResumableSampler, class_weights
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.criterion import Criterion

LOGITS = torch.tensor([[2.0, 0.0], [0.5, 1.5], [0.0, 0.0], [1.0, -1.0]])
LABELS = torch.tensor([0, 1, 1, 1])


def _nll(i: int, c: int) -> float:
    row = LOGITS[i].tolist()
    return -(row[c] - math.log(sum(math.exp(v) for v in row)))


def test_auto_weights_are_inverse_frequency_normalised():
    w = class_weights("auto", [2, 6], ["cat", "dog"])
    assert w == pytest.approx([8 / (2 * 2), 8 / (2 * 6)])  # N / (C n_c): mean weight over the 8 images is 1
    assert (2 * w[0] + 6 * w[1]) / 8 == pytest.approx(1.0)
    assert class_weights("none", [2, 6], ["cat", "dog"]) is None
    assert class_weights("1,3", None, ["cat", "dog"]) == [1.0, 3.0]
    assert class_weights("auto", [4, 0], ["a", "b"]) == [0.5, 0.0]  # no images of b: nothing to weigh
    with pytest.raises(DataError, match="2 weight.*3 classes"):
        class_weights("1,3", None, ["a", "b", "c"])


def test_weighted_loss_by_hand():
    w = [1.0, 3.0]
    by_hand = sum(w[y] * _nll(i, y) for i, y in enumerate(LABELS.tolist())) / sum(w[y] for y in LABELS.tolist())
    plain = sum(_nll(i, y) for i, y in enumerate(LABELS.tolist())) / 4
    got = Criterion(2, weight=w).loss(LOGITS, LABELS).item()
    assert got == pytest.approx(by_hand, rel=1e-6) and abs(got - plain) > 0.05  # the weights change it
    assert Criterion(2).loss(LOGITS, LABELS).item() == pytest.approx(plain, rel=1e-6)
    # soft targets (mixup's path) follow the same rule: one-hot soft targets give the hard-label loss
    soft = torch.nn.functional.one_hot(LABELS, 2).float()
    assert Criterion(2, weight=w).loss(LOGITS, soft).item() == pytest.approx(by_hand, rel=1e-6)


def test_bad_class_weights_exit_2_before_a_run_folder(tmp_path, capsys, folder_dir):
    runs = tmp_path / "runs"
    for value, words in (("abc", "auto, none, or comma-separated"), ("1,-2", "finite weights >= 0"),
                         ("1,2", "2 weight(s) for 3 classes")):
        argv = ["train", f"--train-data-root={folder_dir}", f"--runs-root={runs}", f"--class-weights={value}",
                "--model=smallcnn", "--image-size=24"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--class-weights" in err[0] and words in err[0], err
    assert not runs.exists() or not any(runs.iterdir())


def test_balanced_sampler_draws_classes_equally():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    s = BalancedSampler(labels, seed=5)
    counts: Counter = Counter()
    for epoch in range(20):
        s.set_epoch(epoch)
        counts.update(labels[i] for i, _ in s)
    total = sum(counts.values())
    assert total == 20 * 100
    assert all(abs(counts[c] / total - 1 / 3) < 0.03 for c in range(3)), counts  # 1/3 each, not 0.90/0.09/0.01


def test_balanced_sampler_resumes_exactly_and_shards():
    labels = [0] * 30 + [1] * 7
    full = BalancedSampler(labels, seed=1)
    full.set_epoch(3)
    order = list(full)
    assert len(order) == 37
    part = BalancedSampler(labels, seed=1)
    part.set_epoch(3, start=11)
    assert list(part) == order[11:]  # the same rest of the epoch, items and their augmentation seeds
    other = BalancedSampler(labels, seed=1)
    other.set_epoch(4)
    assert list(other) != order  # a new draw each epoch
    ranks = [BalancedSampler(labels, seed=1, rank=r, world=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(3)
    shards = [list(r) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 19  # padded by wrapping, as ResumableSampler
    assert shards[0] == [order[p % 37] for p in range(0, 38, 2)] and shards[1] == [order[p % 37] for p in range(1, 38, 2)]
    ranks[1].set_epoch(3, start=5)
    assert list(ranks[1]) == shards[1][5:]
    assert isinstance(full, ResumableSampler) and full.per_rank == 37


def _imbalanced(root: Path) -> Path:
    from datagen import make_folder

    folder = make_folder(root / "imb", classes=("ant", "bee"), n_per_class=12, sizes=(28, 36))
    for p in sorted((folder / "bee").iterdir())[4:]:
        p.unlink()  # 12 ants, 4 bees
    return folder


def _records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def base(folder: Path, runs: Path, **kw) -> dict:
    return {"train_data_root": str(folder), "runs_root": str(runs), "model": "smallcnn", "image_size": 24,
            "batch_size": 4, "num_workers": 0, "progress": "none", "debug_file": None, "val_split": 0.25,
            "max_epoch": 2, "print_freq": 1, "deterministic": True, "lr": 0.01, **kw}


def test_auto_weights_logged_and_balanced_resume_exact(tmp_path):
    folder = _imbalanced(tmp_path)
    ref = train(load_config(base(folder, tmp_path, env="ref", class_weights="auto", sampler="balanced")))
    (ev,) = [r for r in _records(ref.run_dir) if r.get("event") == "classes"]
    assert ev["train_counts"] == {"ant": 9, "bee": 3} and ev["sampler"] == "balanced"
    assert ev["class_weights"] == pytest.approx({"ant": 12 / (2 * 9), "bee": 12 / (2 * 3)})
    run = tmp_path / "cut"
    first = train(load_config(base(folder, tmp_path, env="cut", class_weights="auto", sampler="balanced",
                                   max_steps=4)))  # 3 steps an epoch: stops inside epoch 2
    assert first.stopped
    train(load_config({"resume": str(run)}, config_file=run / "config.yaml"))
    a = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the balanced order and the weighted loss resumed exactly
    steps = lambda r: [(x["step"], x["train_loss"]) for x in _records(r) if x.get("kind") == "step"]  # noqa: E731
    assert steps(ref.run_dir) == steps(run)


def test_sampler_option_choices():
    assert load_config({}).data.sampler == "shuffle"
    with pytest.raises(Exception, match="sampler"):
        load_config({"sampler": "weighted"})


@pytest.mark.slow
def test_two_processes_balanced_weighted_auroc(tmp_path):
    """Under torchrun (2 gloo processes): the balanced sampler shards, the weighted loss trains, and the
    logged ROC-AUC and F1 (summed histograms and confusion matrices) equal a single-process evaluation's."""
    import subprocess
    import sys

    folder = _imbalanced(tmp_path)
    run = tmp_path / "ddp"
    opts = {**base(folder, tmp_path, class_weights="auto", sampler="balanced", monitor="val_auroc"),
            "run_dir": str(run), "debug_file": "None", "nproc": 2}  # --monitor through the --nproc relaunch too
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    r = subprocess.run([sys.executable, "-m", "dogcat", "train", *argv], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    from dogcat import evaluate

    epochs = [x for x in _records(run) if x.get("kind") == "epoch"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    logged = epochs[best["state"]["epoch"] - 1]
    res = evaluate(str(run))
    assert res["count"] == logged["val_count"] == 4
    for k in ("auroc", "f1_macro", "accuracy"):
        assert res[k] == pytest.approx(logged[f"val_{k}"], abs=1e-9), k
