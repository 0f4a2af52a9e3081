"""Issue 21 ("Trust, round two"), files from elsewhere (1): nesting and bombs, bounded reads, crafted export
sidecars, the dataset-statistics cache. Each ends in one line (exit 2, or 1 for outside causes), never a traceback.
Names, JSON output and what a new user runs into are in test_safety_user.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from dogcat.cli import main
from dogcat.config import ConfigError, from_dict
from dogcat.io import MalformedFile
from dogcat.jsonfiles import read_json

from hostile import one_error

DEEP = 20_000


def deep_json(n: int = DEEP) -> str:
    return "[" * n + "]" * n


def laughs(levels: int = 8, width: int = 9) -> str:
    """A YAML value of ``width ** (levels + 1)`` strings in a few hundred bytes (aliases of aliases)."""
    lines = ["  - &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines)


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
        from dogcat.runners import ExportError, read_sidecar

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


@pytest.mark.parametrize("key, value", [("lr", {"a": 1}), ("lr", [1, 2]), ("model", [{"a": 1}]), ("name", [[1]]),
                                        ("milestones", [[1, 2]]), ("clip_probs", {"lo": 0.1})])
def test_a_structure_for_a_scalar_option_is_refused_naming_it(tmp_path, capsys, key, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({key: value}))
    assert main(["train", f"--config={recipe}"]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"--{key.replace('_', '-')} (in {recipe}) expects" in line and "got a " in line


def test_stored_configs_nested_deep_or_expanding_are_refused(tmp_path, tiny_run, capsys):
    import sys

    run = tiny_run.run
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


# ---- 9. unbounded reads --------------------------------------------------------------------------------------

@pytest.fixture
def odd_files(tmp_path):
    """A two-class image folder whose ``cat/`` also holds a FIFO named x.jpg, ``dog/`` a 1 GiB sparse big.jpg and
    a link zero.jpg -> /dev/zero."""
    from datagen import make_folder

    root = make_folder(tmp_path / "odd", classes=("cat", "dog"), n_per_class=4)
    os.mkfifo(root / "cat" / "x.jpg")
    with open(root / "dog" / "big.jpg", "wb") as f:
        f.truncate(1 << 30)  # sparse: no disk
    os.symlink("/dev/zero", root / "dog" / "zero.jpg")
    return root


def _unblock(fifo: Path) -> None:
    """Release a reader blocked opening ``fifo`` (on main, PIL was): open the other end, then close it."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)


def test_stats_and_decoding_refuse_fifos_devices_and_huge_files_without_reading(odd_files):
    import threading

    from dogcat.data import decode_image
    from dogcat.data.stats import dataset_stats

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(s=dataset_stats(odd_files)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():
        _unblock(odd_files / "cat" / "x.jpg")
        pytest.fail("dogcat stats hung on a FIFO named x.jpg")
    bad = dict(result["s"].bad)
    assert bad[str(odd_files / "cat" / "x.jpg")] == "not a regular file (a FIFO)"
    assert bad[str(odd_files / "dog" / "zero.jpg")] == "not a regular file (a character device)"
    assert bad[str(odd_files / "dog" / "big.jpg")].startswith("too large: 1,073,741,824 bytes")
    assert result["s"].images == 8
    t0 = time.monotonic()
    assert decode_image(odd_files / "dog" / "big.jpg") == (None, bad[str(odd_files / "dog" / "big.jpg")])
    assert time.monotonic() - t0 < 1  # refused by its size, not read


def test_predict_reports_odd_files_as_rows(tiny_run, odd_files, tmp_path):
    import resource

    run = tiny_run.run
    os.unlink(odd_files / "cat" / "x.jpg")  # (predict's FIFO case is the same decode_image as above)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tmp_path / "p.json"
    assert main(["predict", str(run), str(odd_files), f"--output={out}"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["big.jpg"]["error"].startswith("too large") and "class" in rows["cat_0.jpg"]
    assert rows["zero.jpg"]["error"] == "not a regular file (a character device)"
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB: the 1 GiB file was never read
    assert grew < 512 << 10, grew


def test_a_metrics_file_linked_to_dev_zero_is_one_warning(tiny_run, tmp_path, capsys):
    import shutil

    from dogcat.tracking.run import Run

    run = tiny_run.run
    runs = tmp_path / "runs"
    bad = runs / "zero"
    bad.mkdir(parents=True)
    shutil.copy(run / "config.yaml", bad / "config.yaml")
    os.symlink("/dev/zero", bad / "metrics.jsonl")
    shutil.copytree(run, runs / "good", ignore=shutil.ignore_patterns("lock", "checkpoints"))
    t0 = time.monotonic()
    assert main(["runs", str(runs)]) == 0
    cap = capsys.readouterr()
    assert "good" in cap.out and "zero" not in cap.out
    assert "metrics.jsonl is unreadable: not a regular file (a character device)" in cap.err
    with pytest.raises(MalformedFile, match="not a regular file"):
        Run(bad).records()
    assert time.monotonic() - t0 < 20


def test_a_sample_submission_that_is_no_file_is_one_line(tiny_run, tmp_path, capsys):
    root, run = tiny_run.data, tiny_run.run
    fifo = tmp_path / "sample.csv"
    os.mkfifo(fifo)
    for sample in ("/dev/zero", str(fifo)):
        assert main(["test", str(run), f"--test-data-root={root / 'test'}", f"--sample-submission={sample}",
                     f"--result-file={tmp_path / 's.csv'}"]) == 2
        assert "not a regular file" in one_error(capsys.readouterr().err)



# ---- 11. crafted export sidecars -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    """``{format: (export file, its sidecar as a dict)}`` of the tiny run: ONNX and safetensors."""
    from dogcat.export import export

    run = tiny_run.run
    out = tmp_path_factory.mktemp("exports")
    done = {}
    for fmt, ext in (("onnx", ".onnx"), ("safetensors", ".safetensors")):
        r = export(str(run), fmt, out / f"model{ext}")
        done[fmt] = (r.path, json.loads(r.sidecar.read_text()))
    return done


SIDECAR_CASES = {  # change -> what the one line says (ONNX, safetensors); None: it loads (a size-agnostic CNN)
    "three classes": ({"class_names": ["a", "b", "c"]}, "sidecar names 3 classes", "do not fit the model"),
    "grayscale": ({"in_chans": 1, "mean": [0.5], "std": [0.5]}, "takes inputs of shape", "do not fit the model"),
    "64 px": ({"image_size": 64}, "takes inputs of shape", None),
    "std 1e-45": ({"std": [1e-45] * 3}, "std holds a value below 1e-06", "std holds a value below 1e-06"),
    "negative std": ({"std": [-0.2] * 3}, "std holds a value below", "std holds a value below"),
}


@pytest.mark.parametrize("case", list(SIDECAR_CASES))
@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_a_sidecar_that_does_not_fit_its_model_is_one_line(exports, tiny_run, tmp_path, capsys, fmt, case):
    import shutil

    root = tiny_run.data
    path, meta = exports[fmt]
    change, onnx_says, st_says = SIDECAR_CASES[case]
    says = onnx_says if fmt == "onnx" else st_says
    shutil.copy(path, tmp_path / path.name)
    (tmp_path / f"{path.name}.json").write_text(json.dumps({**meta, **change}))
    code = main(["predict", str(tmp_path / path.name), str(root / "test" / "1.jpg"), "--output=-"])
    cap = capsys.readouterr()
    if says is None:
        assert code == 0 and "nan" not in cap.out
    else:
        assert code == 2 and says in one_error(cap.err), cap.err


def test_onnx_external_data_is_covered_by_the_sha256(tiny_run, tmp_path, monkeypatch, capsys):
    import dogcat
    from dogcat import export as E

    root, run = tiny_run.data, tiny_run.run
    monkeypatch.setattr(E, "EXTERNAL_DATA_BYTES", 0)  # every weight into model.onnx.data, as a >1.5 GB model's
    r = E.export(str(run), "onnx", tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    meta = json.loads(r.sidecar.read_text())
    assert meta["external_data"] == {"model.onnx.data": dogcat.io.sha256_file(data)}
    img = str(root / "test" / "1.jpg")
    assert "class" in dogcat.load(r.path).predict([img])[0]
    good = data.read_bytes()
    data.write_bytes(good[:-4] + b"\0\0\0\0")  # other weights, same size: on main it loaded them
    assert main(["predict", str(r.path), img]) == 2
    assert "tensor data 'model.onnx.data' does not match its sidecar" in one_error(capsys.readouterr().err)
    data.write_bytes(good)
    r.sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "external_data"}))
    assert main(["predict", str(r.path), img]) == 2
    assert "which its sidecar does not vouch for" in one_error(capsys.readouterr().err)


# ---- 7. the --normalize=dataset cache ------------------------------------------------------------------------

@pytest.mark.parametrize("stored", [{"mean": [0.5] * 3, "std": [1e-45] * 3}, {"mean": [0.5], "std": [0.2]},
                                    {"mean": [0.5] * 3, "std": [0.2, float("nan"), 0.2]},
                                    {"mean": [0.5] * 3, "std": [-0.2] * 3}, {"mean": "x"}, deep_json()])
def test_a_bad_statistics_cache_is_rebuilt(tmp_path, caplog, stored):
    from datagen import make_folder

    from dogcat.data.normalize import file_statistics

    root = make_folder(tmp_path / "imgs", classes=("cat", "dog"), n_per_class=3)
    samples = [(str(p), int(p.parent.name == "dog")) for p in sorted(root.rglob("*.jpg"))]
    cache = tmp_path / "cache"
    first = file_statistics(samples, str(root), "RGB", 37, str(cache))
    [path] = list(cache.rglob("norm-*.json"))
    path.write_text(stored if isinstance(stored, str) else json.dumps(stored))
    with caplog.at_level("WARNING", logger="dogcat"):
        assert file_statistics(samples, str(root), "RGB", 37, str(cache)) == first
    assert "statistics cache" in caplog.text and "computing the statistics again" in caplog.text
    assert json.loads(path.read_text())["std"] == list(first[1])  # rebuilt
