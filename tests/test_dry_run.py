"""``dogcat train --dry-run`` (``--fast-dev-run``): a few batches of training and validation through the real code
path, nothing kept; and the options it rests on, ``--limit-train-batches`` / ``--limit-val-batches``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dogcat
from dogcat.cli import main
from dogcat.data import ResumableSampler, ShardSampler, train_sampler


def argv(opts: dict) -> list[str]:
    """Options as the command line spells them (None: left at its default)."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not None]


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three classes of 8 images: 18 train and 6 validation images (val_split 0.25)."""
    from datagen import make_folder

    return make_folder(tmp_path_factory.mktemp("dry") / "data")


def test_dry_run_trains_and_validates_n_batches_and_keeps_nothing(data, tiny, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = files(data)
    root = tmp_path / "deep" / "runs"  # a runs root that does not exist: made for the dry run, then removed
    assert main(["train", "--dry-run=3", *argv(tiny(data, root, logger="tensorboard"))]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("dry run: 3 training batches (3 optimizer steps) of 4 x 3 x 32 x 32 -> 4 x 3 logits, "
                          "3 classes (ant, bee, cow)\n"), out
    assert "  2 validation batches: val loss " in out and "val accuracy" in out  # 6 images: 2 batches of 4
    assert "checkpoints best.pt, last.pt, top-0001-val_accuracy=" in out and "written and loaded back" in out
    assert out.rstrip().endswith("nothing kept")
    assert "18 training / 6 validation images" in err  # the real run's own log lines, on stderr
    assert not (tmp_path / "deep").exists() and files(cwd) == [] and files(data) == before

    # Lightning's name; a runs root that exists keeps what it held, and gets nothing more; accumulation
    root.mkdir(parents=True)
    (root / "keep.txt").write_text("mine\n")
    assert main(["train", "--fast-dev-run", *argv(tiny(data, root, accum_steps=2, batch_size=3))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: 2 training batches (1 optimizer step) of 3 x 3 x 32 x 32 -> 3 x 3 logits")
    assert "  2 validation batches: " in out
    assert files(root) == ["keep.txt"] and files(cwd) == [] and files(data) == before


def test_dry_run_fails_as_the_real_run_fails(data, tiny, tmp_path, monkeypatch, capsys):
    """The same one line and exit status as the real run, and nothing left behind."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("lr: 0.1\n")
    broken = [
        tiny(data, tmp_path / "runs", model="squeezenet", image_size=8),  # the model does not fit the image size
        tiny(data, tmp_path / "a-file" / "runs"),                         # the runs root cannot be made
        tiny(data, tmp_path / "runs", monitor="val_top5_accuracy"),       # the data cannot give the metric
        tiny(tmp_path / "no-such-data", tmp_path / "runs"),               # no data
        tiny(data, tmp_path / "runs", run_dir=str(tmp_path / "taken")),   # --run-dir holds a run
    ]
    for opts in broken:
        assert main(["train", *argv(opts)]) == 2
        real = capsys.readouterr().err.strip().splitlines()
        assert main(["train", "--dry-run", *argv(opts)]) == 2
        dry = capsys.readouterr().err.strip().splitlines()
        assert len(dry) == 1 and dry == real, (dry, real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]
    assert set(files(tmp_path / "taken")) <= {"config.yaml", "lock"}  # the real run's refusal leaves its lock file
    assert main(["train", "--dry-run", "--resume=latest"]) == 2
    assert "--resume and --dry-run do not go together" in capsys.readouterr().err
    assert main(["train", "--dry-run=0"]) == 2
    assert "--dry-run=0 is out of range" in capsys.readouterr().err


def test_limit_train_and_val_batches_in_a_real_run(data, tiny, tmp_path):
    result = dogcat.train(**tiny(data, tmp_path / "runs", limit_train_batches=2, limit_val_batches=1))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r.get("kind") == "epoch")
    assert epoch["step"] == 2 and epoch["val_count"] == 4  # 2 of 5 batches; 1 batch of 4 of the 6 val images


def test_samplers_take_the_limit():
    s = ResumableSampler(10, seed=0, limit=3)
    s.set_epoch(1)
    first = list(s)
    assert len(s) == 3 and len(first) == 3
    s.set_epoch(1, start=1)  # a resumed epoch continues the same limited order
    assert list(s) == first[1:]
    assert len(train_sampler("balanced", type("D", (), {"targets": [0, 1] * 5, "__len__": lambda self: 10})(), 0,
                             limit=4)) == 4
    assert list(ShardSampler(12, 0, 1, limit=4)) == [0, 3, 6, 9]  # spread: every class of a sorted set
    assert list(ShardSampler(12, 1, 2, limit=3)) == [1, 5, 9]
    assert list(ShardSampler(5, 0, 1, limit=9)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("args, n", [(["--dry-run"], 2), (["--dry-run=5"], 5), (["--dry-run", "5"], 5),
                                     (["--fast-dev-run", "--lr=0.1"], 2), (["--fast-dev-run=3"], 3), ([], None)])
def test_dry_run_spellings(args, n):
    from dogcat.cli import COMMANDS
    from dogcat.cli.args import parse

    ns, _ = parse(COMMANDS["train"], args)
    assert ns.dry_run == n
