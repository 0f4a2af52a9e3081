"""The metrics table is the one place a metric is defined: balanced accuracy, added as one entry, is computed,
logged, monitored (best.pt), drawn in TensorBoard, shown in the report and the runs table."""

from __future__ import annotations

import json

import pytest

from dogcat import load_config, train
from dogcat.engine.evaluator import report
from dogcat.metrics import METRICS, Tally, compute, metric, monitors
from dogcat.tracking.listing import load_run

# 3 classes, true rows x predicted columns: 10 ants (8 right), 5 bees (1 right), 5 cows (5 right)
CM = [[8, 1, 1], [3, 1, 1], [0, 0, 5]]


def test_balanced_accuracy_by_hand():
    t = Tally(CM, loss_sum=4.0, logloss_sum=5.0, count=20)
    m = compute(t)
    assert m["accuracy"] == pytest.approx(14 / 20)
    assert m["balanced_accuracy"] == pytest.approx((8 / 10 + 1 / 5 + 5 / 5) / 3)  # 0.6667, below accuracy 0.70
    assert m["loss"] == pytest.approx(0.2) and m["logloss"] == pytest.approx(0.25)
    # a class without images is left out of the mean rather than counted as 0 or 1
    assert compute(Tally([[2, 0], [0, 0]], 0.0, 0.0, 2))["balanced_accuracy"] == 1.0
    assert "val_balanced_accuracy" in monitors() and metric("val_balanced_accuracy").higher_is_better


def test_balanced_accuracy_monitored_drawn_and_reported(tmp_path, tiny):
    from datagen import make_folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_folder(tmp_path / "train", classes=("ant", "bee", "cow"), n_per_class=8)
    make_folder(tmp_path / "val", classes=("ant", "bee", "cow"), n_per_class=3)
    res = train(load_config(tiny(tmp_path, tmp_path / "runs", max_epoch=3, monitor="val_balanced_accuracy",
                                 keep_top_k=0)))
    epochs = [r for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "epoch"]
    values = [r["val_balanced_accuracy"] for r in epochs]
    assert len(values) == 3 and res.best_metric == max(values)  # best.pt chosen by it, higher is better
    assert res.best_epoch == epochs[values.index(max(values))]["epoch"]
    # the runs table's best column reads the same metric, with the same direction
    assert load_run(res.run_dir).best() == ("val_balanced_accuracy", pytest.approx(max(values)), res.best_epoch)

    acc = EventAccumulator(str(res.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    drawn = [e.value for e in acc.Scalars("val/balanced_accuracy")]
    assert drawn == pytest.approx(values, abs=1e-6)

    page = report(str(res.run_dir)).read_text()
    assert "balanced accuracy" in page and format(max(values), METRICS["balanced_accuracy"].fmt) in page
