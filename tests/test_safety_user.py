"""Issue 21 ("Trust, round two") (2): control characters and `$` in names, NaN in --json, Fashion-MNIST files,
and what a new user runs into (a closed pipe, optimizers torch cannot run here, devices that are absent, a hub
download offline, a bad weight file, `ctl` while a run starts); plus issue 22's --device=auto order. Each ends in
one line (exit 2, or 1 for outside causes), never a traceback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from dogcat import load_config
from dogcat.cli import main

from hostile import one_error


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

def test_json_output_is_valid_json_and_nan_predictions_warn(tiny_run, tmp_path, capsys):
    import math

    root, run = tiny_run.data, tiny_run.run
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
def test_a_bad_weight_file_is_one_line_before_a_run_folder(tiny_run, tmp_path, capsys, option, file):
    from datagen import make_folder, tiny_options

    run = tiny_run.run
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
    from dogcat.tracking.folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text("{}\n")
    run.status_file.write_text("running\n")

    def ask(timeout: float) -> dict:  # as `dogcat ctl RUN save` asks
        return send(run.control, "save", timeout=timeout, starting=run.starting)

    with pytest.raises(NotRunning, match="no training process is running"):  # nobody holds the lock
        ask(5)
    lock = FileLock(run.lock).acquire()  # what a starting trainer holds while it loads data and the model
    try:
        with pytest.raises(TimeoutError, match="still starting after 1s"):
            ask(1)
        answers: list = []
        with caplog.at_level("INFO", logger="dogcat"):
            sender = threading.Thread(target=lambda: answers.append(ask(30)))
            sender.start()
            time.sleep(1.0)  # ctl is waiting now; on main it had already said "no training process is running"
            inbox = Inbox(run.control, min_interval=0)  # the training loop starts reading commands
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
