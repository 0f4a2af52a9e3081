"""Helpers of the issue-14 tests (test_safety*.py): the one-error-line check and a tiny trained run."""

from __future__ import annotations

from pathlib import Path



def one_error(err: str) -> str:
    """The single ``dogcat CMD: error: ...`` line of a failed command; no traceback, no second error."""
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tiny_run(root: Path) -> Path:
    """A 1-epoch smallcnn at 32 px on a small Kaggle-layout set under ``root``; returns the run folder."""
    from datagen import make_kaggle, tiny_options

    from dogcat import load_config, train

    make_kaggle(root, n_per_class=6, n_test=4, bad=False, sizes=(40, 60))
    return train(load_config(tiny_options(root, root / "runs"))).run_dir
