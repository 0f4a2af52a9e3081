"""Helpers of the issue-14 tests (test_safety*.py): the one-error-line check and a tiny trained run."""

from __future__ import annotations

from pathlib import Path

FAST = {"image_size": 32, "batch_size": 4, "num_workers": 0, "model": "smallcnn", "print_freq": 2,
        "progress": "none", "lr": 0.01, "max_epoch": 1, "val_split": 0.25}


def one_error(err: str) -> str:
    """The single ``dogcat CMD: error: ...`` line of a failed command; no traceback, no second error."""
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tiny_run(root: Path) -> Path:
    """A 1-epoch smallcnn at 32 px on a small Kaggle-layout set under ``root``; returns the run folder."""
    from datagen import make_kaggle

    from dogcat import load_config, train

    make_kaggle(root, n_per_class=6, n_test=4, bad=False, sizes=(40, 60))
    return train(load_config({"train_data_root": str(root / "train"), "test_data_root": str(root / "test"),
                              "runs_root": str(root / "runs"), **FAST})).run_dir
