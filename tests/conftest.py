"""Shared fixtures: tiny generated data sets in tmp_path (see datagen.py) and one tiny finished run.

Which to take:
- ``tiny_run`` (session): a finished 1-epoch run and its data, trained once for the whole session. Take it
  whenever a test only *reads* a run folder (val, test, predict, export, explain, report, runs, safety checks
  with an ``--output`` elsewhere). It is shared, so it is read-only: a test that writes into it (a default
  output such as ``RUN/submission.csv`` or ``RUN/export/``, a planted file, a resume) takes
  ``tiny_run.copy(tmp_path)`` first. A check after every test fails the test that changed it.
- ``tiny(data, runs, **options)``: the options of a tiny run of your own (datagen.tiny_options), for a test
  that needs to train something else.
- ``kaggle_dir`` / ``folder_dir`` / ``fmnist_dir``: fresh generated data in the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from datagen import ...`

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers: one torch thread each (subprocesses
    os.environ["OMP_NUM_THREADS"] = "1"    # too) keeps them from fighting over the two cores
    import torch

    torch.set_num_threads(1)

from datagen import make_fmnist_idx, make_folder, make_kaggle, tiny_options  # noqa: E402


@pytest.fixture(autouse=True)
def _no_option_variables(monkeypatch):
    """The tests see no DOGCAT_* option variables from the shell that runs them (`dogcat` reads them as options);
    dogcat's own (DOGCAT_SRC, DOGCAT_FUZZ_EXAMPLES) stay."""
    import os

    from dogcat.config.environ import NOT_OPTIONS, PREFIX

    for name in [n for n in os.environ if n.startswith(PREFIX) and n not in NOT_OPTIONS]:
        monkeypatch.delenv(name)


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    """Kaggle layout root with ``train/`` (12 cats, 12 dogs, odd and bad files) and ``test/1..6.jpg``."""
    make_kaggle(tmp_path / "kaggle")
    return tmp_path / "kaggle"


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    """ImageFolder root with classes ant, bee, cow (8 images each)."""
    return make_folder(tmp_path / "folder")


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """Folder with the four gzipped Fashion-MNIST IDX files (200 train, 50 test images)."""
    return make_fmnist_idx(tmp_path / "fmnist")


@pytest.fixture(scope="session")
def tiny():
    """``tiny(data, runs, **options)``: the options of a tiny run on generated ``data`` (datagen.tiny_options)."""
    return tiny_options


@dataclass(frozen=True)
class TinyRun:
    """The session's tiny finished run (see :func:`tiny_run`).

    ``data``: a Kaggle-layout root, ``train/{cat,dog}.N.jpg`` (6 each, 40-60 px, no bad files) and
    ``test/1.jpg .. test/4.jpg``; ``runs``: the runs root, holding this one run only; ``run``: the run folder
    ``runs/r`` (smallcnn at 32 px, 1 epoch, val_split 0.25: 9 train and 3 val images; best.pt, last.pt)."""

    data: Path
    runs: Path
    run: Path

    def copy(self, dest: Path) -> Path:
        """A private copy of the run folder at ``dest/runs/r`` (links kept as links); returns it."""
        out = Path(dest) / "runs" / self.run.name
        shutil.copytree(self.run, out, symlinks=True)
        return out


_SHARED: list[Path] = []  # the session-wide folders no test may change (checked after each test)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of everything under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One tiny finished training run, trained once per session and shared READ-ONLY by every test that only
    reads a run folder (val / test / predict / export / explain / report / runs ...): a :class:`TinyRun` with
    ``data`` (Kaggle layout: train/ 12 images of cat and dog, test/ 4), ``runs`` (the runs root, this run only)
    and ``run`` (``runs/r``, 1 epoch of smallcnn at 32 px, datagen.tiny_options).

    Write nothing into it: give outputs another place (``--output``, ``--result-file``, ``export(run, fmt,
    tmp_path / ...)``), or work on ``tiny_run.copy(tmp_path)``. After every test the fixture's folder is compared
    with its state when trained, and a test that changed it fails, naming what changed."""
    from datagen import make_kaggle, tiny_options

    from dogcat import load_config, train

    root = tmp_path_factory.mktemp("tiny-run")
    make_kaggle(root / "data", n_per_class=6, n_test=4, bad=False, sizes=(40, 60))
    result = train(load_config(tiny_options(root / "data", root / "runs", env="r")))
    _SHARED.append(root)
    _BEFORE[root] = _snapshot(root)
    return TinyRun(root / "data", root / "runs", result.run_dir)


_BEFORE: dict[Path, dict] = {}


@pytest.fixture(autouse=True)
def _shared_run_untouched():
    """Fails the test that wrote into the session's ``tiny_run`` (see there), naming the files it changed."""
    yield
    for root in _SHARED:
        now = _snapshot(root)
        before = _BEFORE[root]
        if now != before:
            changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
            _BEFORE[root] = now  # one failure per change, not one per later test
            pytest.fail(f"this test changed the shared tiny_run under {root} (copy it first: "
                        f"tiny_run.copy(tmp_path)): {changed[:10]}", pytrace=False)
