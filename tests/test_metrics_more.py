"""The metrics of issue 16: per-class scores, macro/weighted F1, top-5, ROC-AUC against hand-computed values;
their exact DDP reduction; --monitor on one of them, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dogcat import evaluate, load_config, test, train
from dogcat.cli import main
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.meters import EvalMeter
from dogcat.metrics import Tally, check_monitor, compute, monitors, per_class, per_class_named

CM = [[5, 1, 0],   # rows: actual, columns: predicted
      [2, 3, 1],
      [0, 0, 4]]


def test_per_class_and_f1_by_hand():
    s = per_class(CM)
    # class 0: tp 5 of 6 actual, 7 predicted; class 1: 3 of 6, 4 predicted; class 2: 4 of 4, 5 predicted
    assert [x["precision"] for x in s] == pytest.approx([5 / 7, 3 / 4, 4 / 5])
    assert [x["recall"] for x in s] == pytest.approx([5 / 6, 1 / 2, 1.0])
    f1 = [10 / 13, 0.6, 8 / 9]  # 2pr / (p + r)
    assert [x["f1"] for x in s] == pytest.approx(f1)
    assert [x["support"] for x in s] == [6, 6, 4]
    m = compute(Tally(CM, 0.0, 0.0, 16))
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["f1_weighted"] == pytest.approx((6 * f1[0] + 6 * f1[1] + 4 * f1[2]) / 16)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert "auroc" not in m and "top5_accuracy" not in m  # 3 classes: neither says anything
    named = per_class_named(CM, ["ant", "bee", "cow"])
    assert set(named) == {"ant", "bee", "cow"} and named["cow"] == {"precision": 0.8, "recall": 1.0,
                                                                     "f1": pytest.approx(8 / 9), "support": 4}


def test_macro_f1_leaves_out_a_class_that_never_occurs():
    cm = [[2, 0, 0], [1, 1, 0], [0, 0, 0]]  # class 2: no images, never predicted
    assert compute(Tally(cm, 0.0, 0.0, 4))["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)


def _scores_meter(odds: list[float], labels: list[int]) -> EvalMeter:
    m = EvalMeter(2)
    m.update(torch.tensor([[0.0, s] for s in odds], dtype=torch.float64), torch.tensor(labels))
    return m


def test_auroc_by_hand():
    neg, pos = [-2.0, 0.5, 1.0], [-1.0, 0.5, 3.0]
    m = _scores_meter(neg + pos, [0] * 3 + [1] * 3).compute()
    # pairs (positive above negative): -1 beats -2; 0.5 beats -2, ties 0.5 (1/2); 3 beats all three
    assert m["auroc"] == pytest.approx((1 + 1.5 + 3) / 9)
    assert _scores_meter([-30.0, 30.0], [0, 1]).compute()["auroc"] == 1.0  # beyond the bins' range: still ranked
    assert math.isnan(_scores_meter([0.1, 0.2], [1, 1]).compute()["auroc"])  # no negatives: undefined
    assert "top5_accuracy" not in m


def test_top5_by_hand():
    # 7 classes; logits rank class k at position k (0 highest): label at rank < 5 counts
    logits = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1]]).repeat(7, 1)
    labels = torch.arange(7)
    meter = EvalMeter(7)
    meter.update(logits, labels)
    m = meter.compute()
    assert m["top5_accuracy"] == pytest.approx(5 / 7) and m["accuracy"] == pytest.approx(1 / 7)
    assert "auroc" not in m


@pytest.mark.parametrize("c", [2, 7])
def test_two_halves_reduce_to_the_whole(c):
    """What DDP does: each rank's meter, summed with all_reduce, equals one meter over everything."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, c, generator=g) * 3, torch.randint(0, c, (40,), generator=g)
    whole, a, b = EvalMeter(c), EvalMeter(c), EvalMeter(c)
    whole.update(logits, labels)
    a.update(logits[:17], labels[:17])
    b.update(logits[17:], labels[17:])
    other: list[torch.Tensor] = []
    b.all_reduce(lambda t: other.append(t.clone()) or t)
    a.all_reduce(lambda t: t + other[0])
    wa, wb = whole.compute(), a.compute()
    assert wa.keys() == wb.keys() and wa["confusion"] == wb["confusion"]
    for k in wa:
        if k != "confusion":
            assert wb[k] == pytest.approx(wa[k], rel=1e-12), k


def test_monitor_choices_and_applicability():
    assert {"val_f1_macro", "val_f1_weighted", "val_balanced_accuracy", "val_top5_accuracy", "val_auroc"} <= set(monitors())
    assert check_monitor("val_f1_macro", 3) is None and check_monitor("val_auroc", 2) is None
    assert "val_auroc" in check_monitor("val_auroc", 3) and "3 classes" in check_monitor("val_auroc", 3)
    assert check_monitor("val_top5_accuracy", 5) and check_monitor("val_top5_accuracy", 6) is None


FAST = {"model": "smallcnn", "image_size": 24, "batch_size": 6, "num_workers": 0, "progress": "none",
        "debug_file": None, "print_freq": 2, "lr": 0.01}


def test_monitor_f1_macro_end_to_end(folder_dir, tmp_path):
    res = train(load_config({"train_data_root": str(folder_dir), "runs_root": str(tmp_path), "max_epoch": 3,
                             "val_split": 0.375, "monitor": "val_f1_macro", "env": "f1", **FAST}))
    epochs = [r for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "epoch"]
    assert all({"val_f1_macro", "val_f1_weighted", "val_balanced_accuracy"} <= set(r) for r in epochs)
    assert not any("val_auroc" in r or "val_top5_accuracy" in r for r in epochs)  # 3 classes
    values = [r["val_f1_macro"] for r in epochs]
    assert res.best_metric == max(values) and res.best_epoch == values.index(max(values)) + 1
    best = load_checkpoint(res.run_dir / "checkpoints" / "best.pt")
    assert best["state"]["epoch"] == res.best_epoch and best["monitor"] == "val_f1_macro"
    out = evaluate(str(res.run_dir), report=True)
    saved = json.loads((res.run_dir / "result.json").read_text())
    assert saved["f1_macro"] == pytest.approx(res.best_metric, abs=1e-9)
    assert set(saved["per_class"]) == {"ant", "bee", "cow"}
    assert sum(v["support"] for v in saved["per_class"].values()) == saved["count"] == 9
    page = Path(out["report"]).read_text()
    assert "f1 macro" in page and "train images" in page  # the class-count table: 5 of each class trained
    tested = test(str(res.run_dir), test_data_root=str(folder_dir), result_file=str(tmp_path / "sub.csv"))
    saved = json.loads((res.run_dir / "test_result.json").read_text())
    assert saved["per_class"] == tested["per_class"] and sum(v["support"] for v in saved["per_class"].values()) == 24
    assert "f1_macro" in saved["metrics"] and "top5_accuracy" not in saved["metrics"]


def test_monitor_that_does_not_apply_exits_2_before_a_run_folder(folder_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["train", f"--train-data-root={folder_dir}", f"--runs-root={runs}", "--monitor=val_auroc",
            "--model=smallcnn", "--image-size=24"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--monitor=val_auroc" in err[0] and "val_f1_macro" in err[0]
    assert not runs.exists() or not any(runs.iterdir())
