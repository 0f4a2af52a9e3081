"""Early stopping (--patience, --min-delta): the counter, a run that stops as finished with its reason in
`dogcat runs`, and a resume that keeps the counter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen import tiny_options
from dogcat import load_config, train
from dogcat.cli import main
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.state import TrainState
from dogcat.tracking.listing import find_runs, runs_table, show


def test_counter_counts_only_gains_above_min_delta():
    s = TrainState()
    for value in (0.50, 0.52, 0.60, 0.605, 0.61, 0.59):  # min_delta 0.05 against 0.60 after epoch 3
        s.observe("val_accuracy", value, 0.05)
        s.next_epoch()
    assert s.plateau_best == 0.60 and s.plateau_epochs == 3  # 0.605, 0.61, 0.59: none beat 0.60 by > 0.05
    assert s.best == 0.61 and s.best_epoch == 5  # best.pt still takes any gain
    assert s.patience_out(3) and not s.patience_out(4) and not s.patience_out(0)
    t = TrainState()
    t.load_state_dict(s.state_dict())
    assert (t.plateau_best, t.plateau_epochs) == (0.60, 3)
    s = TrainState()
    for value in (1.0, 0.9, 0.95):  # a loss: lower is better
        s.observe("val_loss", value)
    assert s.plateau_epochs == 1 and s.plateau_best == 0.9


def test_old_checkpoint_state_has_no_counter():
    t = TrainState()
    t.load_state_dict({"epoch": 3, "batch_in_epoch": 0, "global_step": 9, "best_metric": 0.5, "best_epoch": 2})
    assert (t.plateau_best, t.plateau_epochs) == (None, 0)


def cfg(root: Path, runs: Path, **kw):
    """min_delta 1.0: accuracy can never gain more than 1, so only epoch 1 counts as an improvement and the run
    stops after 1 + patience epochs whatever it learns. A ``kw`` of None leaves that option at its default."""
    opts = tiny_options(root, runs, **{"image_size": 24, "max_epoch": 10, "patience": 2, "min_delta": 1.0,
                                       "print_freq": 1, "deterministic": True, **kw})
    return load_config({k: v for k, v in opts.items() if v is not None or k not in kw})


@pytest.fixture(scope="module")
def es_data(tmp_path_factory):
    from datagen import make_kaggle

    root = tmp_path_factory.mktemp("es")
    make_kaggle(root, n_per_class=8, n_test=2, bad=False, sizes=(28, 36))  # 12 train images: 3 steps an epoch
    return root


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "epoch"]


def test_early_stop_finishes_and_runs_shows_why(es_data, tmp_path, capsys):
    res = train(cfg(es_data, tmp_path, env="es"))
    assert _epochs(res.run_dir) == [1, 2, 3] and not res.stopped
    assert res.early_stop and "--patience=2" in res.early_stop and "val_accuracy" in res.early_stop
    assert (res.run_dir / "status").read_text().strip() == "finished"
    events = [r for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "early_stop"]
    assert len(events) == 1 and events[0]["epoch"] == 3
    (info,) = find_runs(tmp_path)
    assert info.early_stop == res.early_stop
    row = runs_table([info]).splitlines()[1]
    assert "finished (early stop)" in row and "3/10" in row
    assert res.early_stop in show(res.run_dir)
    assert main(["runs", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["early_stop"] == res.early_stop


def test_resume_keeps_the_counter(es_data, tmp_path):
    run = tmp_path / "cut"
    first = train(cfg(es_data, tmp_path, env="cut", max_steps=7))  # stops in epoch 3, after epoch 2's checkpoint
    assert first.stopped
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["state"]["epoch"], ck["state"]["epochs_without_improvement"]) == (2, 1)
    res = train(load_config({"resume": str(run)}, config_file=run / "config.yaml"))
    assert _epochs(run) == [1, 2, 3] and res.early_stop  # a lost counter would train a 4th epoch
    assert (run / "status").read_text().strip() == "finished"


def test_patience_is_off_by_default(es_data, tmp_path):
    """Without --patience, a run that never improves by min_delta trains every epoch and records no early stop."""
    res = train(cfg(es_data, tmp_path, env="off", max_epoch=4, patience=None))
    assert _epochs(res.run_dir) == [1, 2, 3, 4] and not res.early_stop
    assert not [r for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
                if r.get("event") == "early_stop"]


def test_resume_from_a_checkpoint_without_the_new_options():
    """A checkpoint written before --patience, --sampler and --class-weights existed ran with their defaults:
    resuming it is no change; patience may change on resume, the sampler may not."""
    from dogcat import ConfigError
    from dogcat.config import Config, to_dict
    from dogcat.engine.resume import resume_changes

    old = to_dict(Config())
    for sec, leaf in (("train", "patience"), ("train", "min_delta"), ("data", "sampler"), ("optim", "class_weights")):
        del old[sec][leaf]
    assert resume_changes(old, Config()) == {}
    assert resume_changes(old, load_config({"patience": 3})) == {"patience": [0, 3]}
    with pytest.raises(ConfigError, match="sampler"):
        resume_changes(old, load_config({"sampler": "balanced"}))
