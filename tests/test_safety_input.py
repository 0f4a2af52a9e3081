"""Issue 21 ("Trust, round two"), input from elsewhere: nesting and bombs, bounded reads, crafted export sidecars,
the dataset-statistics cache, control characters and `$` in names, NaN in --json, and what a new user runs into
(a closed pipe, optimizers torch cannot run here, devices that are absent, a hub download offline, a bad weight
file, `ctl` while a run starts). Each ends in one line (exit 2, or 1 for outside causes), never a traceback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from dogcat import load_config
from dogcat.cli import main
from dogcat.config import ConfigError, from_dict
from dogcat.io import MalformedFile, read_json

from hostile import one_error, tiny_run

DEEP = 20_000


def deep_json(n: int = DEEP) -> str:
    return "[" * n + "]" * n


def laughs(levels: int = 8, width: int = 9) -> str:
    """A YAML value of ``width ** (levels + 1)`` strings in a few hundred bytes (aliases of aliases)."""
    lines = ["  - &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(data root, run folder) of a tiny trained run."""
    root = tmp_path_factory.mktemp("input")
    return root, tiny_run(root)


# ---- 4. nesting and bombs ----------------------------------------------------------------------------------

def test_a_deeply_nested_command_file_is_answered_not_raised(tmp_path):
    from dogcat.control import Inbox

    (tmp_path / "config.yaml").write_text("{}\n")
    inbox = Inbox(tmp_path, min_interval=0)
    (inbox.inbox / "deep.json").write_text(deep_json())
    assert inbox.poll() == []  # on main: RecursionError, which ended the training
    answer = json.loads((inbox.done / "deep.json").read_text())
    assert answer["ok"] is False and "nested" in answer["message"]
    assert not (inbox.inbox / "deep.json").exists()


@pytest.mark.parametrize("kind", ["sidecar", "manifest"])
def test_deeply_nested_files_of_ours_are_one_line(tmp_path, kind, capsys):
    if kind == "sidecar":
        from dogcat.exported import ExportError, read_sidecar

        (tmp_path / "m.onnx").write_bytes(b"x")
        (tmp_path / "m.onnx.json").write_text(deep_json())
        with pytest.raises(ExportError, match="nested more than"):
            read_sidecar(tmp_path / "m.onnx")
        assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path)]) == 2
        assert "nested" in one_error(capsys.readouterr().err)
    else:
        (tmp_path / "manifest.json").write_text('{"a": ' + deep_json() + "}")
        with pytest.raises(MalformedFile, match="nested more than"):
            read_json(tmp_path / "manifest.json", "manifest")


def test_recipes_with_deep_nesting_or_alias_bombs_are_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("lr: " + deep_json() + "\n")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("lr:\n" + laughs() + "\n")
    assert len(bomb.read_bytes()) < 600  # 9 ** 9 strings once expanded: about 2.5 GB of text when printed
    t0 = time.monotonic()
    for recipe, why in ((deep, "nested more than"), (bomb, "more than 1,000,000 values")):
        assert main(["train", f"--config={recipe}"]) == 2
        assert why in one_error(capsys.readouterr().err)
    assert time.monotonic() - t0 < 20  # refused while parsing, not after expanding


@pytest.mark.parametrize("key, value", [("lr", {"a": 1}), ("lr", [1, 2]), ("model", [{"a": 1}]), ("env", [[1]]),
                                        ("milestones", [[1, 2]]), ("clip_probs", {"lo": 0.1})])
def test_a_structure_for_a_scalar_option_is_refused_naming_it(tmp_path, capsys, key, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({key: value}))
    assert main(["train", f"--config={recipe}"]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"--{key.replace('_', '-')} (in {recipe}) expects" in line and "got a " in line


def test_stored_configs_nested_deep_or_expanding_are_refused(tmp_path, tiny, capsys):
    import sys

    _, run = tiny
    good = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    wide: list = ["x" * 100]
    for _ in range(8):  # 10 ** 8 references in a few hundred bytes of pickle (its memo shares them)
        wide = [wide] * 10
    limit = sys.getrecursionlimit()
    for name, value in (("deep", deep), ("wide", wide)):
        ckpt = {**good, "config": {**good["config"], "model": {"model": value}}}
        sys.setrecursionlimit(20_000)  # pickling 5000 levels needs more than the default
        try:
            torch.save(ckpt, tmp_path / f"{name}.pt")
        finally:
            sys.setrecursionlimit(limit)
        assert (tmp_path / f"{name}.pt").stat().st_size < 1 << 20
        t0 = time.monotonic()
        assert main(["val", str(tmp_path / f"{name}.pt")]) == 2
        line = one_error(capsys.readouterr().err)
        assert "nested more than" in line or "more than 1,000,000 values" in line, line
        assert time.monotonic() - t0 < 20
        with pytest.raises(ConfigError, match="not a config"):  # the same rule for any stored config
            from_dict(ckpt["config"], "the test's config")
