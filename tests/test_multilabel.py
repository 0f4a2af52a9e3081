"""Multi-label classification (``--task=multilabel``): list files with several labels per image, the metrics
(checked against scikit-learn), thresholds chosen on validation and carried by checkpoints and exports,
predict / val / test / report, bad input as one line before any run folder, and exact resume.

The data (tests/multilabel_data.py): 32x32 PNGs with 2 or 3 of the labels bar, blue, green, red each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import multilabel_data as mld
from datagen import TINY
from dogcat import load_config, train
from dogcat.config import ConfigError
from dogcat.data import DataError
from dogcat.data.listfile import load_multilabel
from dogcat.data.multilabel import Columns
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.metrics import LabelTally, choose_thresholds
from dogcat.preprocess import Preprocess, PreprocessError

sklearn = pytest.importorskip("sklearn.metrics")

LABELS = mld.LABELS


def options(train_list: Path, val_list: Path | None, runs: Path, **kw) -> dict:
    opts = {**TINY, "task": "multilabel", "train_list": str(train_list), "runs_root": str(runs), "batch_size": 8,
            "monitor": "val_map", "scheduler": "none"}
    if val_list is not None:
        opts["val_list"] = str(val_list)
    return {**opts, **kw}


def masks_to_rows(samples: list[tuple[str, int]]) -> list[list[int]]:
    return [[y >> i & 1 for i in range(len(LABELS))] for _, y in samples]


# --- the metrics, against scikit-learn ---------------------------------------------------------------------

def random_tally(seed: int, n: int = 60, c: int = 5) -> tuple[list[list[float]], list[list[int]]]:
    rng = random.Random(seed)
    targets = [[int(rng.random() < 0.4) for _ in range(c)] for _ in range(n)]
    for j in range(c):  # every label has a positive and a negative
        targets[j][j], targets[j + c][j] = 1, 0
    # informative scores with ties (rounded) so that tie handling is exercised
    scores = [[round(min(1.0, max(0.0, 0.35 * y + rng.random() * 0.65)), 2) for y in row] for row in targets]
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    import numpy as np

    scores, targets = random_tally(seed)
    t = LabelTally(scores, targets, 0.0, len(scores))
    y, s = np.array(targets), np.array(scores)
    pred = (s >= np.array(t.thresholds)).astype(int)
    aps = sklearn.average_precision_score(y, s, average=None)
    assert [lab["ap"] for lab in t.labels] == pytest.approx(list(aps), abs=1e-12)
    assert t.mean_ap() == pytest.approx(sklearn.average_precision_score(y, s, average="macro"), abs=1e-12)
    f1s = sklearn.f1_score(y, pred, average=None, zero_division=0)
    assert [lab["f1"] for lab in t.labels] == pytest.approx(list(f1s), abs=1e-12)
    assert t.f1_micro() == pytest.approx(sklearn.f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert t.exact_match() == pytest.approx(sklearn.accuracy_score(y, pred), abs=1e-12)
    # each threshold is the best one: no cut between two scores gives a higher F1 for its label
    for j in range(s.shape[1]):
        cuts = sorted(set(s[:, j])) + [1.01]
        kept = s[:, j][None, :] >= np.array(cuts)[:, None]  # one row per cut
        tp, n, pos = (kept & (y[:, j] == 1)).sum(1), kept.sum(1), y[:, j].sum()
        best = (2 * tp / (n + pos)).max()
        assert f1s[j] == pytest.approx(best, abs=1e-12)


def test_threshold_sits_between_kept_and_dropped_scores():
    assert choose_thresholds([[0.9, 0.8, 0.3, 0.2]], [[1, 1, 0, 0]]) == [pytest.approx(0.55)]
    assert choose_thresholds([[0.9, 0.8]], [[0, 0]]) == [0.5]  # no positive: nothing to choose from


def test_preprocess_carries_task_and_checks_stored_thresholds():
    pre = Preprocess(("a", "b"), 3, (0.5,) * 3, (0.5,) * 3, 32, "crop", task="multilabel", thresholds=(0.3, 0.7))
    assert Preprocess.from_dict(pre.to_dict()) == pre
    plain = Preprocess(("a", "b"), 3, (0.5,) * 3, (0.5,) * 3, 32)
    assert "task" not in plain.to_dict()  # a multi-class model's stored facts are what they always were
    bad = {**pre.to_dict(), "thresholds": [0.3, 7.0]}
    with pytest.raises(PreprocessError, match="thresholds"):
        Preprocess.from_dict(bad)
    with pytest.raises(PreprocessError, match="task"):
        Preprocess.from_dict({**pre.to_dict(), "task": "regression"})


def test_the_loss_is_bce_with_logits_and_auto_weights_are_negatives_over_positives(tmp_path):
    from dogcat.data import loss_weights
    from dogcat.data.images import ImageFiles
    from dogcat.data.multilabel import encode, multi_hot
    from dogcat.engine.criterion import Criterion

    masks = torch.tensor([encode([0, 2]), encode([1]), encode([0, 1, 2]), encode([0])])
    logits = torch.randn(4, 3)
    hot = multi_hot(masks, 3)
    assert hot.tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 1], [1, 0, 0]]
    ds = ImageFiles([(f"{i}.png", int(m)) for i, m in enumerate(masks)], [str(i) for i in range(4)], lambda x: x)
    counts, w = loss_weights("auto", ds, ["a", "b", "c"], multilabel=True)
    assert counts == [3, 2, 2] and w == pytest.approx([1 / 3, 1.0, 1.0])
    want = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w))(logits, hot)
    assert torch.allclose(Criterion(3, weight=w, multilabel=True).loss(logits, masks), want)


# --- reading list files --------------------------------------------------------------------------------------

def test_list_formats_give_the_same_masks(tmp_path):
    rows = mld.write_images(tmp_path / "img", 12, 0)
    sep = load_multilabel(mld.write_list(tmp_path / "a.csv", rows), Columns(label="labels"))
    cols = load_multilabel(mld.write_list(tmp_path / "b.csv", rows, columns=True),
                           Columns(labels=tuple(LABELS)))
    star = load_multilabel(mld.write_list(tmp_path / "c.csv", rows, columns=True, path_column="file"),
                           Columns(path="file", labels=("*",)))
    space = load_multilabel(mld.write_list(tmp_path / "d.csv", rows, sep=" ", label_column="tags"),
                            Columns(label="tags", sep=None))
    lines = tmp_path / "e.txt"
    lines.write_text("".join(f"{p} {';'.join(ls)}\n" for p, ls in rows))
    plain = load_multilabel(lines, Columns())
    want = [[int(n in ls) for n in LABELS] for _, ls in rows]
    for samples, names, _ in (sep, cols, star, space, plain):
        assert names == LABELS
        assert masks_to_rows(samples) == want
    assert sep[2] == [f"img/img{i:03d}" for i in range(12)]  # ids: paths relative to the list, no extension


def test_a_val_list_with_an_unknown_label_is_refused(tmp_path):
    rows = mld.write_images(tmp_path / "img", 4, 0)
    path = mld.write_list(tmp_path / "v.csv", [(rows[0][0], ["red", "purple"])] + rows[1:])
    with pytest.raises(DataError, match="'purple'.*not one of the training labels"):
        load_multilabel(path, Columns(label="labels"), LABELS)


# --- bad input: one line, exit 2, no run folder ---------------------------------------------------------------

@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ml")
    return mld.make(tmp)


@pytest.mark.parametrize("bad, match", [
    ({"label_column": "nope"}, "no column 'nope'"),
    ({"path_column": "file"}, "no column 'file'"),
    ({"mixup": 0.2}, "--mixup=0.2 is not allowed with --task=multilabel"),
    ({"label_smoothing": 0.1}, "--label-smoothing=0.1 is not allowed"),
    ({"monitor": "val_auroc"}, "not computed for a multi-label model"),
    ({"class_weights": "1,2"}, "2 weight\\(s\\) for 4 labels"),
])
def test_bad_options_fail_before_a_run_folder(lists, tmp_path, bad, match):
    runs = tmp_path / "runs"
    with pytest.raises((DataError, ConfigError), match=match):
        train(load_config(options(*lists, runs, **bad)))
    assert not runs.exists() or not any(runs.iterdir())


def test_empty_labels_and_a_folder_layout_are_refused(lists, tmp_path):
    train_list, val_list = lists
    text = train_list.read_text().splitlines()
    empty = train_list.parent / "empty.csv"
    empty.write_text("\n".join([text[0], text[1].split(",")[0] + ",", *text[2:]]) + "\n")
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match="1 rows have no labels"):
        train(load_config(options(empty, val_list, runs)))
    with pytest.raises(DataError, match="--task=multilabel reads several labels per image from a list file"):
        train(load_config({**options(train_list, val_list, runs), "train_list": None,
                           "train_data_root": str(train_list.parent)}))
    assert not runs.exists()


def test_cli_says_it_in_one_line(lists, tmp_path, capsys):
    from dogcat.cli import main

    train_list, val_list = lists
    code = main(["train", "--task=multilabel", f"--train-list={train_list}", f"--val-list={val_list}",
                 "--label-column=tags", f"--runs-root={tmp_path / 'runs'}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "no column 'tags' (--label-column=tags); its columns" in errors[0]
    assert not (tmp_path / "runs").exists()


# --- training, val, predict, export, test, report --------------------------------------------------------------

@pytest.fixture(scope="module")
def ml_run(lists, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = train(load_config(options(*lists, runs, env="ml")))
    return lists, result


def test_training_learns_and_checkpoints_carry_the_thresholds(ml_run):
    _, result = ml_run
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "val_map" in r]
    assert len(epochs) == 1 and epochs[-1]["val_map"] > 0.8  # chance is about 0.6 (2.5 of 4 labels apply)
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    pre = Preprocess.from_dict(best["preprocess"])
    assert pre.task == "multilabel" and pre.classes == tuple(LABELS)
    assert list(pre.thresholds) == epochs[best["state"]["best_epoch"] - 1]["val_thresholds"]
    per_label = epochs[-1]["val_per_label"]
    assert set(per_label) == set(LABELS) and all({"ap", "f1", "threshold"} <= set(v) for v in per_label.values())


def test_val_and_predict_agree_with_sklearn(ml_run):
    import numpy as np

    import dogcat
    from dogcat.engine.evaluator import evaluate

    (_, val_list), result = ml_run
    res = evaluate(result.run_dir)
    clf = dogcat.load(result.run_dir)
    samples, names, _ = load_multilabel(val_list, Columns(label="labels"), LABELS)
    rows = clf.predict([p for p, _ in samples])
    s = np.array([[r["probs"][n] for n in names] for r in rows])
    y = np.array(masks_to_rows(samples))
    assert res["map"] == pytest.approx(sklearn.average_precision_score(y, s, average="macro"), abs=1e-5)
    cut = np.array(res["thresholds"])
    assert list(cut) == pytest.approx(list(clf.pre.thresholds))  # chosen again on the same split: the same
    pred = (s >= cut).astype(int)
    assert res["f1_micro"] == pytest.approx(sklearn.f1_score(y, pred, average="micro", zero_division=0), abs=1e-5)
    assert res["f1_macro"] == pytest.approx(sklearn.f1_score(y, pred, average="macro", zero_division=0), abs=1e-5)
    assert res["accuracy"] == pytest.approx(sklearn.accuracy_score(y, pred), abs=1e-5)
    for r, row in zip(rows, pred):  # predict returns the labels over their thresholds
        assert r["labels"] == [n for n, on in zip(names, row) if on]
        assert "class" not in r


def test_export_carries_task_and_thresholds(ml_run, tmp_path):
    import dogcat
    from dogcat.export import export

    (_, val_list), result = ml_run
    out = export(str(result.run_dir), "safetensors", tmp_path / "m.safetensors")
    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["task"] == "multilabel" and len(sidecar["thresholds"]) == len(LABELS)
    images = sorted(str(p) for p in (val_list.parent / "val").glob("*.png"))[:8]
    from_run, from_export = dogcat.load(result.run_dir).predict(images), dogcat.load(out.path).predict(images)
    assert [r["labels"] for r in from_run] == [r["labels"] for r in from_export]
    for a, b in zip(from_run, from_export):
        assert list(a["probs"].values()) == pytest.approx(list(b["probs"].values()), abs=1e-5)


def test_test_submission_and_report(ml_run):
    from dogcat.engine.evaluator import report, test

    (_, val_list), result = ml_run
    res = test(result.run_dir, test_list=str(val_list))  # a labelled list: scored at the model's thresholds
    lines = Path(res["submission"]).read_text().splitlines()
    assert lines[0] == "id,labels," + ",".join(LABELS) and len(lines) == 25
    assert res["metrics"]["thresholds"] == pytest.approx(list(load_checkpoint(
        result.run_dir / "checkpoints" / "best.pt")["preprocess"]["thresholds"]))
    page = report(result.run_dir).read_text()
    assert "Per-label scores" in page and all(f"<td>{n}</td>" in page for n in LABELS)


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(lists, tmp_path):
    """48 images, batches of 8: 6 steps an epoch; cut mid-epoch 2 (step 8), after the thresholds of epoch 1
    were chosen, then resumed to the end: the same weights, records and thresholds."""
    ref = train(load_config(options(*lists, tmp_path, max_epoch=2, env="ref", deterministic=True)))
    cut = train(load_config(options(*lists, tmp_path, max_epoch=2, env="cut", deterministic=True, max_steps=8)))
    assert cut.stopped
    mid = load_checkpoint(cut.run_dir / "checkpoints" / "last.pt")["preprocess"]["thresholds"]
    ep1 = load_checkpoint(ref.run_dir / "checkpoints" / "epoch-0001.pt") if (
        ref.run_dir / "checkpoints" / "epoch-0001.pt").is_file() else None
    train(load_config({"resume": str(cut.run_dir)}, config_file=cut.run_dir / "config.yaml"))
    a = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(cut.run_dir / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["preprocess"] == b["preprocess"]
    assert mid != [0.5] * len(LABELS)  # the stop's checkpoint kept epoch 1's thresholds
    if ep1 is not None:
        assert mid == ep1["preprocess"]["thresholds"]
    volatile = {"time", "images_per_s", "train_images_per_s", "epoch_seconds"}
    logged = [{k: v for k, v in json.loads(x).items() if k not in volatile}
              for x in (ref.run_dir / "metrics.jsonl").read_text().splitlines()]
    again = [{k: v for k, v in json.loads(x).items() if k not in volatile}
             for x in (cut.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in logged if r.get("kind") != "event"] == [r for r in again if r.get("kind") != "event"]
