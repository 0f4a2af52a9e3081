"""The Dogs vs. Cats page's commands (docs/dogs-vs-cats.md), run verbatim on a small generated Kaggle-layout set."""

from __future__ import annotations

import pytest

import csv
import re
import shlex
from pathlib import Path

from dogcat.cli import main

PAGE = Path(__file__).parents[1] / "docs" / "dogs-vs-cats.md"


def readme_commands() -> list[list[str]]:
    block = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)[1]  # the second block: train, val, test
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith(".venv/bin/dogcat ")]


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_readme_dogs_vs_cats_commands(tmp_path, monkeypatch):
    from datagen import make_kaggle

    info = make_kaggle(tmp_path / "data", n_per_class=5, n_test=4, sizes=(40, 64))
    (tmp_path / "data" / "test").rename(tmp_path / "data" / "test1")  # Kaggle's zip is named test1
    monkeypatch.chdir(tmp_path)
    cmds = readme_commands()
    assert [c[0] for c in cmds] == ["train", "val", "test"]
    for cmd in cmds:
        assert main(cmd) == 0, cmd
    assert (tmp_path / "runs" / "dogs-vs-cats" / "result.json").is_file()
    rows = list(csv.reader((tmp_path / "submission.csv").open(newline="")))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == sorted(info["test_ids"], key=int)
    assert len((tmp_path / "runs" / "dogs-vs-cats" / "bad_files.txt").read_text().splitlines()) == len(info["bad"])

