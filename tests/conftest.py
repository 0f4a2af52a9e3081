"""Shared fixtures: tiny generated data sets in tmp_path (see datagen.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from datagen import ...`

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
