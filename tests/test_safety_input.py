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


def test_predict_reports_odd_files_as_rows(tiny, odd_files, tmp_path):
    import resource

    _, run = tiny
    os.unlink(odd_files / "cat" / "x.jpg")  # (predict's FIFO case is the same decode_image as above)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tmp_path / "p.json"
    assert main(["predict", str(run), str(odd_files), f"--output={out}"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["big.jpg"]["error"].startswith("too large") and "class" in rows["cat_0.jpg"]
    assert rows["zero.jpg"]["error"] == "not a regular file (a character device)"
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB: the 1 GiB file was never read
    assert grew < 512 << 10, grew


def test_a_metrics_file_linked_to_dev_zero_is_one_warning(tiny, tmp_path, capsys):
    import shutil

    from dogcat.tracking.run import Run

    _, run = tiny
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


def test_a_sample_submission_that_is_no_file_is_one_line(tiny, tmp_path, capsys):
    root, run = tiny
    fifo = tmp_path / "sample.csv"
    os.mkfifo(fifo)
    for sample in ("/dev/zero", str(fifo)):
        assert main(["test", str(run), f"--test-data-root={root / 'test'}", f"--sample-submission={sample}",
                     f"--result-file={tmp_path / 's.csv'}"]) == 2
        assert "not a regular file" in one_error(capsys.readouterr().err)



# ---- 11. crafted export sidecars -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """``{format: (export file, its sidecar as a dict)}`` of the tiny run: ONNX and safetensors."""
    from dogcat.export import export

    _, run = tiny
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
def test_a_sidecar_that_does_not_fit_its_model_is_one_line(exports, tiny, tmp_path, capsys, fmt, case):
    import shutil

    root, _ = tiny
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


def test_onnx_external_data_is_covered_by_the_sha256(tiny, tmp_path, monkeypatch, capsys):
    import dogcat
    from dogcat import export as E

    root, run = tiny
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


# ---- 6. `$...$` in class and file names ----------------------------------------------------------------------

def _named_run(tmp_path: Path, classes: tuple[str, str], env: str, **kw) -> tuple[Path, Path]:
    """A 1-epoch smallcnn on a two-class folder with these class names; returns (data root, run folder)."""
    from datagen import make_folder, tiny_options

    data = make_folder(tmp_path / "data", classes=classes, n_per_class=6)
    opts = tiny_options(data, tmp_path / "runs", env=env, **kw)
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 0
    return data, tmp_path / "runs" / env


def test_math_text_in_names_neither_stops_tensorboard_nor_report_nor_explain(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, run = _named_run(tmp_path, ("c$^$t", "d$\\foo$g"), "dollars")
    err = capsys.readouterr().err
    assert "switched off" not in err, err  # on main: the confusion matrix failed to draw, TensorBoard was dropped
    [events] = run.glob("**/events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]
    assert main(["report", str(run)]) == 0
    img = data / "c$^$t" / "c$^$t_0.jpg"
    named = img.with_name("x$\\alpha^$.jpg")
    named.write_bytes(img.read_bytes())
    assert main(["explain", str(run), str(named), f"--output={tmp_path / 'explain'}"]) == 0
    assert list((tmp_path / "explain").glob("*.png"))
    assert "Traceback" not in capsys.readouterr().err


# ---- 12. control characters in names -----------------------------------------------------------------------

def test_control_characters_in_names_are_escaped_everywhere_shown(tmp_path, capsys):
    from datagen import make_folder

    evil_class = "dog\nINFO forged line\x1b]0;title\x07"
    data = make_folder(tmp_path / "data", classes=("cat\x1b[2J", evil_class), n_per_class=6)
    (data / "cat\x1b[2J" / "bad\nfile\x1b[H.jpg").write_bytes(b"not an image")
    (data / "cat\x1b[2J" / "tab\tbad.jpg").write_bytes(b"")
    from datagen import tiny_options

    opts = tiny_options(data, tmp_path / "runs", env="ctl", logger="none")
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 0
    run = tmp_path / "runs" / "ctl"
    for args in (["stats", str(data)], ["predict", str(run), str(data)], ["val", str(run)], ["runs", str(run.parent)]):
        assert main(args) == 0
    cap = capsys.readouterr()
    for stream in (cap.out, cap.err):
        assert not any(c in stream for c in "\x1b\x07\r"), repr(stream[:2000])
        assert not any(line.startswith("INFO forged") for line in stream.splitlines())
    assert "bad\\nfile\\x1b[H.jpg" in cap.err and "cat\\x1b[2J" in cap.out
    lines = (run / "bad_files.txt").read_text().splitlines()  # one line a file, tab-separated, names escaped
    assert len(lines) == 2 and all(line.count("\t") == 1 for line in lines), lines
    assert any(line.startswith(f"{data}/cat\\x1b[2J/bad\\nfile\\x1b[H.jpg\t") for line in lines)
    # the split files are CSV: they keep the exact names (quoted), so a list-file run reads them back
    assert evil_class in (run / "splits" / "train.csv").read_text() + (run / "splits" / "val.csv").read_text()


# ---- low: NaN in --json, Fashion-MNIST labels and empty files -------------------------------------------------

def test_json_output_is_valid_json_and_nan_predictions_warn(tiny, tmp_path, capsys):
    import math

    root, run = tiny
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "nan.pt")
    out = tmp_path / "p.json"
    assert main(["predict", str(tmp_path / "nan.pt"), str(root / "test"), f"--output={out}"]) == 0
    assert "NaN or infinite probabilities for 4 of 4 images" in capsys.readouterr().err
    rows = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert rows[0]["probability"] is None
    assert main(["val", str(tmp_path / "nan.pt"), f"--train-data-root={root / 'train'}", "--val-split=0.25",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert result["loss"] is None or math.isfinite(result["loss"])


@pytest.mark.parametrize("case", ["label 12", "no images"])
def test_fashion_mnist_files_with_bad_labels_or_no_images_are_one_line(tmp_path, capsys, case):
    import gzip
    import struct

    import numpy as np
    from datagen import make_fmnist_idx, tiny_options

    root = make_fmnist_idx(tmp_path / "f")
    if case == "label 12":
        labels = np.arange(200) % 10
        labels[7] = 12
        data = struct.pack(">I1I", 0x0801, 200) + labels.astype(np.uint8).tobytes()
        (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(data))
    else:
        for name, head in (("train-images-idx3-ubyte.gz", struct.pack(">I3I", 0x0803, 0, 28, 28)),
                           ("train-labels-idx1-ubyte.gz", struct.pack(">I1I", 0x0801, 0))):
            (root / name).write_bytes(gzip.compress(head))
    opts = tiny_options(root, tmp_path / "runs")
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 2
    line = one_error(capsys.readouterr().err)
    assert ("outside 0-9 (the largest is 12)" if case == "label 12" else "holds no images") in line
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


# ---- a new user's tries: optimizers, devices, the hub offline, a bad weight file, a closed pipe, ctl early -----

@pytest.mark.parametrize("name", ["lbfgs", "LBFGS", "sparseadam", "muon"])
def test_optimizers_torch_cannot_run_here_are_refused_before_a_run(tmp_path, capsys, name):
    from datagen import make_folder, tiny_options

    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=4)
    opts = tiny_options(data, tmp_path / "runs", optimizer=name)
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"--optimizer='{name}' is not supported" in line and "Choices: adadelta" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device, says", [("mps", "asks for MPS, but no MPS device"), ("xpu", "asks for XPU"),
                                          ("xpu:1", "asks for XPU"), ("meta", "is not a device")])
def test_a_device_that_is_not_here_is_one_line_before_a_run(tmp_path, capsys, device, says):
    from datagen import make_folder, tiny_options

    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=4)
    opts = tiny_options(data, tmp_path / "runs", device=device)
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 2
    assert says in one_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("have, use_gpu, picked", [({"cuda": 1, "mps": 1, "xpu": 1}, True, "cuda"),
                                                   ({"mps": 1, "xpu": 2}, True, "mps"), ({"xpu": 2}, True, "xpu"),
                                                   ({}, True, "cpu"), ({"cuda": 2}, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_xpu_then_cpu_and_says_so_once(monkeypatch, caplog, have, use_gpu, picked):
    from dogcat.engine import runtime

    monkeypatch.setattr(runtime, "accelerator_count", lambda kind: have.get(kind, 0))
    monkeypatch.setattr(runtime, "_logged", set())
    cfg = load_config({"device": "auto", "use_gpu": use_gpu}).train
    with caplog.at_level("INFO", logger="dogcat"):
        assert runtime.pick_device(cfg) == torch.device(picked)
        runtime.pick_device(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device: ")]
    why = "auto" if picked != "cpu" else ("--use-gpu=false" if not use_gpu else "no CUDA, MPS or XPU")
    assert lines == [f"device: {picked} ({why})"]


@pytest.mark.parametrize("option", ["pretrained", "load_model_path"])
@pytest.mark.parametrize("file", ["missing", "junk", "other model"])
def test_a_bad_weight_file_is_one_line_before_a_run_folder(tiny, tmp_path, capsys, option, file):
    from datagen import make_folder, tiny_options

    _, run = tiny
    path = {"missing": tmp_path / "nope.pt", "junk": tmp_path / "junk.pt", "other model": run / "checkpoints" / "best.pt"}
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=4)
    opts = tiny_options(data, tmp_path / "runs", **{option: str(path[file])},
                        **({"model": "fastcnn"} if file == "other model" else {}))
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 2
    line = one_error(capsys.readouterr().err)
    assert str(path[file]) in line or "does not match" in line or "nothing in" in line, line
    assert not (tmp_path / "runs").exists()  # on main: a failed run folder was left behind


@pytest.mark.parametrize("model, url", [("torchvision:resnet18", "https://download.pytorch.org/models/resnet18-"),
                                        ("resnet18", "https://download.pytorch.org/models/resnet18-"),
                                        ("timm:resnet18", "https://huggingface.co/timm/resnet18")])
def test_hub_weights_offline_say_what_to_download(tmp_path, capsys, monkeypatch, model, url):
    import socket

    import huggingface_hub.constants
    from datagen import make_folder, tiny_options

    def offline(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in this test)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty caches: nothing downloaded before
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: no 50 s of retries
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=4)
    opts = tiny_options(data, tmp_path / "runs", model=model, pretrained="hub")
    assert main(["train", *[f"--{k}={v}" for k, v in opts.items() if v is not None]]) == 1  # an outside cause
    line = one_error(capsys.readouterr().err)
    assert "needs the internet" in line and url in line and "--pretrained=FILE" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["help"], ["runs", "{runs}"], ["--version"]])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, args):
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # `dogcat ... | head -1` once head has gone: every write fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "dogcat", *[a.format(runs=tmp_path) for a in args]],
                           stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert p.returncode == 141 and p.stderr == "", p.stderr  # as ls does; on main a traceback, exit 1 or 120


def test_ctl_waits_for_a_run_that_is_starting(tmp_path, caplog):
    import threading

    from dogcat.control import Inbox, NotRunning, send
    from dogcat.locks import FileLock

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "status").write_text("running\n")
    with pytest.raises(NotRunning, match="no training process is running"):  # nobody holds the lock
        send(run, "save", timeout=5)
    lock = FileLock(run / "lock").acquire()  # what a starting trainer holds while it loads data and the model
    try:
        with pytest.raises(TimeoutError, match="still starting after 1s"):
            send(run, "save", timeout=1)
        answers: list = []
        with caplog.at_level("INFO", logger="dogcat"):
            sender = threading.Thread(target=lambda: answers.append(send(run, "save", timeout=30)))
            sender.start()
            time.sleep(1.0)  # ctl is waiting now; on main it had already said "no training process is running"
            inbox = Inbox(run, min_interval=0)  # the training loop starts reading commands
            for _ in range(200):
                for name, command in inbox.poll():
                    inbox.ack(name, {"ok": True, "message": f"did {command}"})
                if answers:
                    break
                time.sleep(0.05)
            sender.join(10)
        assert answers == [{"ok": True, "message": "did save"}]
        assert "is starting" in caplog.text
    finally:
        lock.release()
