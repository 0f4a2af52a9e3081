"""``dogcat sweep``: a search space checked before any trial, trials as run folders, pruning, kill -9 and
re-run, two processes on one study, best.yaml. Tiny generated Fashion-MNIST IDX files, smallcnn at 28 px."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from datagen import make_fmnist_idx  # noqa: E402

import dogcat  # noqa: E402
from dogcat.cli import main  # noqa: E402
from dogcat.config import ConfigError, builtin  # noqa: E402
from dogcat.sweep import show, sweep  # noqa: E402
from dogcat.sweep.space import read_space  # noqa: E402

SRC = str(Path(__file__).parents[1] / "src")


def space_file(folder: Path, data: Path, search: dict, **train: object) -> Path:
    recipe = {"data": {"dataset": "fashion-mnist", "fashion_mnist_root": str(data), "image_size": 28,
                       "batch_size": 32, "num_workers": 0, "val_split": 0.25},
              "model": {"model": "smallcnn"}, "optim": {"optimizer": "adam", "lr": 0.003},
              "train": {"max_epoch": 3, "progress": "none", "keep_top_k": 0, **train}, "search": search}
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fmnist_idx(tmp_path_factory.mktemp("fm") / "fm", n_train=160, n_test=16)


def study_of(folder: Path, name: str = "space") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


@pytest.mark.parametrize("search, words", [
    ({"lrr": {"loguniform": [1e-4, 1e-2]}}, ["unknown option --lrr", "--lr"]),
    ({"lr": {"loguniform": [0, 1e-2]}}, ["lr", "lo > 0"]),
    ({"lr": {"uniform": [0.1, 0.01]}}, ["lr", "empty"]),
    ({"lr": {"normal": [0, 1]}}, ["lr", "loguniform"]),
    ({"batch_size": {"choice": [0, 64]}}, ["batch_size", "--batch-size=0", "out of range"]),
    ({"val_split": {"uniform": [0.1, 1.0]}}, ["val_split", "1.0", "out of range"]),
    ({"scheduler": {"choice": ["cosine", "cosin"]}}, ["scheduler", "cosin", "not one of"]),
    ({"max_epoch": {"int": [1.5, 4]}}, ["max_epoch", "integers"]),
    ({"lr": {"int": [1, 4]}}, ["lr", "float"]),
    ({"run_dir": {"choice": ["a", "b"]}}, ["--run-dir", "cannot be searched"]),
    ({"model": {"choice": ["smallcnn", "nosuchnet"]}}, ["model", "nosuchnet"]),
])
def test_bad_space_fails_before_any_folder_naming_the_key(search, words, data, tmp_path, capsys):
    path = space_file(tmp_path, data, search)
    assert main(["sweep", str(path), f"--runs-root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("space", [n for n in builtin.names() if n.startswith("sweep-")])
def test_every_shipped_space_is_valid(space):
    parsed = read_space(space)
    assert parsed.params and parsed.base.train.monitor == "val_accuracy"


def test_space_without_search_and_searched_option_given_twice(data, tmp_path):
    path = space_file(tmp_path, data, {"lr": {"choice": [0.01]}})
    with pytest.raises(ConfigError, match="given on the command line and searched"):
        read_space(path, {"lr": "0.1"})
    with pytest.raises(ConfigError, match="--nproc must be 1"):  # one trial, one process (docs/sweeps.md)
        read_space(path, {"nproc": "2"})
    with pytest.raises(ConfigError, match="set by the sweep for each trial"):
        read_space(path, {"run_dir": "x"})
    path.write_text(path.read_text().replace("search:", "notsearch:"))
    with pytest.raises(ConfigError, match="no `search:` block"):
        read_space(path)


def test_sweep_prunes_a_bad_trial_and_best_yaml_trains(data, tmp_path, capsys):
    """Three trials, the third with lr 1e-9: the median pruner stops it at epoch 2 of 3 (status pruned, reason
    logged); the trials are run folders `dogcat runs` lists; best.yaml trains."""
    runs = tmp_path / "runs"
    path = space_file(tmp_path, data, {"lr": {"choice": [0.003, 1e-9]}, "weight_decay": {"uniform": [0, 0.1]}})
    folder = runs / "space"
    folder.mkdir(parents=True)
    pre = optuna.create_study(study_name="space", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for lr in (0.003, 0.003, 1e-9):  # the order matters: the median pruner waits for two finished trials
        pre.enqueue_trial({"lr": lr, "weight_decay": 0.01})
    out = sweep(path, trials=3, overrides={"runs_root": str(runs)})
    assert (out.ran, out.done, out.best_number) == (3, 3, 0)
    study = study_of(folder)
    assert states(study) == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    pruned = folder / "trial-0002"
    assert (pruned / "status").read_text().strip() == "pruned"
    event = [json.loads(x) for x in (pruned / "metrics.jsonl").read_text().splitlines() if '"pruned"' in x][-1]
    assert event["epoch"] == 2 and "median" in event["reason"] and "val_accuracy" in event["reason"]
    assert json.loads((pruned / "manifest.json").read_text())["exit"]["code"] == 0
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    assert yaml.safe_load((folder / "trial-0002" / "config.yaml").read_text())["optim"]["lr"] == 1e-9

    assert main(["runs", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "trial-0002" in table and "pruned" in table and table.count("finished") == 2
    assert main(["sweep", "show", "space", f"--runs-root={runs}"]) == 0
    text = capsys.readouterr().out
    assert "best: trial 0" in text and "pruned by the median pruner" in text
    assert (folder / "history.png").stat().st_size > 1000 and (folder / "parallel.png").stat().st_size > 1000
    shown = show(folder)
    assert [r["state"] for r in shown["trials"]] == ["complete", "complete", "pruned"]

    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["optim"]["lr"] == 0.003 and "run_dir" not in best["train"] and "runs_root" not in best["train"]
    again = dogcat.train(str(folder / "best.yaml"), runs_root=str(tmp_path / "again"), max_epoch=1)
    assert (again.run_dir / "status").read_text().strip() == "finished"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dogcat", "sweep", *args, "-q"]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
            "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_finishes_n_trials(data, tmp_path):
    runs = tmp_path / "runs"
    path = space_file(tmp_path, data, {"weight_decay": {"uniform": [0, 0.1]}}, max_epoch=4)
    cmd = _cli(str(path), "--trials=3", f"--runs-root={runs}", "--pruner=none")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = runs / "space" / "trial-0001" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.is_file() and '"kind": "epoch"' in metrics.read_text()):  # trial 1 is mid-way
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert states(study_of(runs / "space"))[1] == "RUNNING"  # what the killed process left

    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    study = study_of(runs / "space")
    got = states(study)
    assert got[1] == "FAIL" and "killed" in study.trials[1].user_attrs["fail_reason"]
    assert sum(s in ("COMPLETE", "PRUNED") for s in got.values()) == 3 and "RUNNING" not in got.values()
    assert sorted(p.name for p in (runs / "space").glob("trial-*")) == [f"trial-{n:04d}" for n in sorted(got)]
    assert (runs / "space" / "trial-0001" / "status").read_text().strip() == "failed"
    assert json.loads((runs / "space" / "trial-0001" / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_two_processes_share_one_study(data, tmp_path):
    runs = tmp_path / "runs"
    path = space_file(tmp_path, data, {"weight_decay": {"uniform": [0, 0.1]}}, max_epoch=2)
    cmd = _cli(str(path), "--trials=4", f"--runs-root={runs}", "--pruner=none")
    procs = [subprocess.Popen(cmd + [f"--seed={i}"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    study = study_of(runs / "space")
    assert states(study) == {n: "COMPLETE" for n in range(4)}
    dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(dirs)) == 4 and sorted(Path(d).name for d in dirs) == [f"trial-{n:04d}" for n in range(4)]
    assert sorted(p.name for p in (runs / "space").glob("trial-*")) == [f"trial-{n:04d}" for n in range(4)]
    assert len({t.user_attrs["pid"] for t in study.trials}) in (1, 2)
    assert all((runs / "space" / f"trial-{n:04d}" / "status").read_text().strip() == "finished" for n in range(4))
