"""End to end on generated data: train, checkpoints, resume, val, test (submission), predict."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import dogcat

from datagen import tiny_options
from dogcat import evaluate, load_config, predict, test, train
from dogcat.cli import main
from dogcat.engine.checkpoint import load_checkpoint



def kaggle_cfg(root: Path, runs: Path, **kw):
    return load_config(tiny_options(root, runs, progress="plain", **kw))


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory):
    """One Kaggle-layout run (with every bad file kind) shared by the tests below; 4 short epochs so that
    BatchNorm's running statistics have settled (after 16 steps 18 % of their initial values remain)."""
    from datagen import make_kaggle

    root = tmp_path_factory.mktemp("kaggle")
    info = make_kaggle(root, n_per_class=16, n_test=6)
    (root / "test" / "7.jpg").write_bytes(b"")  # an unreadable test image still gets a row
    runs = root / "runs"
    result = train(kaggle_cfg(root, runs, max_epoch=4, val_split=0.25))
    return root, info, result


def test_kaggle_run_folder(kaggle_run):
    root, info, result = kaggle_run
    run = result.run_dir
    assert (run / "status").read_text().strip() == "finished"
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "splits", "bad_files.txt"} <= {p.name for p in run.iterdir()}
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt"} <= names and len([n for n in names if n.startswith("top-")]) == 3
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["val_accuracy"] >= 0.75  # the generated classes are easy
    bad_listed = (run / "bad_files.txt").read_text()
    assert all(Path(p).name in bad_listed for p in info["bad"])  # each bad kind skipped and counted
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["state"]["epoch"] == 4 and ckpt["preprocess"]["classes"] == ["cat", "dog"] and "optimizer" in ckpt


def test_val_reproduces_logged_metrics(kaggle_run):
    _, _, result = kaggle_run
    res = evaluate(str(result.run_dir))
    logged = next(r for r in result.history if r["epoch"] == result.best_epoch)
    assert res["accuracy"] == pytest.approx(logged["val_accuracy"], abs=1e-9)
    assert res["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    assert res["logloss"] == pytest.approx(logged["val_logloss"], rel=1e-5)
    assert json.loads((result.run_dir / "result.json").read_text())["count"] == res["count"]


def test_submission(kaggle_run, tmp_path):
    root, info, result = kaggle_run
    out = tmp_path / "submission.csv"
    test(str(result.run_dir), {"result_file": str(out)})
    raw = out.read_bytes()  # the csv module's line ends, "\r\n", each once (no "\r\r\n", no bare "\n")
    assert raw.count(b"\r\n") == raw.count(b"\n") == raw.count(b"\r") == 8 and raw.endswith(b"\r\n")
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["id", "label"]
    ids = [int(r[0]) for r in rows[1:]]
    assert [str(i) for i in ids[:-1]] == info["test_ids"] and ids == list(range(1, 8))  # numeric order, 7 too
    expected = {int(Path(p["path"]).stem): p["probs"]["dog"]  # the submission's p(dog) is predict's
                for p in dogcat.predict(str(result.run_dir), [str(root / "test" / f"{i}.jpg") for i in ids[:-1]])}
    assert {int(r[0]): float(r[1]) for r in rows[1:-1]} == pytest.approx(expected, abs=2e-6)  # 6 decimals
    assert rows[-1] == ["7", "0.500000"]  # the 0-byte test image: maximal uncertainty, reported
    probs = {int(r[0]): float(r[1]) for r in rows[1:7]}
    labels = info["test_labels"]  # {id: class name}; the submission holds p(dog)
    assert sum((probs[int(i)] > 0.5) == (name == "dog") for i, name in labels.items()) >= 5


def test_predict_files_folder_glob(kaggle_run, tmp_path):
    root, _, result = kaggle_run
    rows = predict(str(result.run_dir), [str(root / "test" / "1.jpg"), str(root / "test" / "[23].jpg")])
    assert [Path(r["path"]).name for r in rows] == ["1.jpg", "2.jpg", "3.jpg"]
    assert all(r["class"] in ("cat", "dog") and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)
    out = tmp_path / "p.csv"
    assert main(["predict", str(result.run_dir), str(root / "test"), f"--output={out}"]) == 0
    lines = list(csv.DictReader(out.open(newline="")))
    assert len(lines) == 7 and lines[0].keys() >= {"path", "class", "probability", "cat", "dog", "error"}
    assert any(line["error"] for line in lines)  # 7.jpg is empty
    assert main(["predict", str(result.run_dir), str(root / "test" / "1.jpg"), f"--output={tmp_path / 'p.json'}"]) == 0
    assert json.loads((tmp_path / "p.json").read_text())[0]["class"] in ("cat", "dog")


def test_resume_continues_same_folder(kaggle_run, tmp_path):
    _, _, result = kaggle_run
    run = tmp_path / "runs" / result.run_dir.name  # a copy: the other tests read the module's run as trained
    shutil.copytree(result.run_dir, run, symlinks=True)
    again = train(load_config({"resume": str(run), "max_epoch": 5}, config_file=run / "config.yaml"))
    assert again.run_dir == run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_accuracy" in r] == [1, 2, 3, 4, 5]
    steps = [r["step"] for r in records if "step" in r and "event" not in r]
    assert steps == sorted(steps)  # one step axis across the resume
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 5
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_epoch"] == 5
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["state"]["epoch"] == 4  # the original


def test_config_yaml_repeats_a_run(kaggle_run, tmp_path):
    _, _, result = kaggle_run
    cfg = load_config({"run_dir": str(tmp_path / "again"), "max_epoch": 1},
                      config_file=result.run_dir / "config.yaml")
    again = train(cfg)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    mine = yaml.safe_load((again.run_dir / "config.yaml").read_text())
    for sec in ("data", "model", "optim"):
        assert saved[sec] == mine[sec]


def test_existing_run_dir_is_refused(kaggle_run, capsys):
    root, _, result = kaggle_run
    assert main(["train", f"--train-data-root={root / 'train'}", f"--run-dir={result.run_dir}"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_imagefolder_with_val_folder(tmp_path):
    from datagen import make_folder

    make_folder(tmp_path / "train", n_per_class=8)
    make_folder(tmp_path / "val", n_per_class=3)
    cfg = load_config(tiny_options(tmp_path, tmp_path / "runs", progress="plain", max_epoch=2, lr=0.02,
                                   optimizer="sgd", scheduler="cosine", warmup_epochs=0.5))
    result = train(cfg)
    assert result.history[-1]["val_count"] == 9
    assert load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["preprocess"]["classes"] == ["ant", "bee", "cow"]


def test_fashion_mnist_recipe_on_tiny_idx(fmnist_dir, tmp_path):
    cfg = load_config({"fashion_mnist_root": str(fmnist_dir), "runs_root": str(tmp_path), "max_epoch": 1,
                       "progress": "none"}, config_file="fashion-mnist")  # the built-in recipe, by name
    result = train(cfg)
    scored = test(str(result.run_dir))
    assert scored["metrics"]["count"] == 50 and scored["rows"] == 50
    header = next(csv.reader((result.run_dir / "submission.csv").open(newline="")))
    assert header[:2] == ["id", "label"] and len(header) == 12  # label = class name, one column per class


def test_seed_style_weights_file(kaggle_run, tmp_path):
    """A bare state_dict (the template's BasicModule.save) works with --load-model-path and --model."""
    root, _, result = kaggle_run
    sd = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["model"]
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "seed.pth")
    out = tmp_path / "sub.csv"
    assert main(["test", f"--load-model-path={tmp_path / 'seed.pth'}", "--model=SmallCNN", "--image-size=32",
                 f"--test-data-root={root / 'test'}", f"--result-file={out}"]) == 0
    mine = tmp_path / "mine.csv"
    test(str(result.run_dir), {"result_file": str(mine)})
    assert out.read_text() == mine.read_text()
