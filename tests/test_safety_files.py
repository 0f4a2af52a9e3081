"""Issue 14, hostile files and bad values, in one process (2): caches, odd names and trees, disk full,
malformed files of ours, and the smaller items (unwrap for ctl debug, planted temp files, config.yaml whole,
git in our own repository only)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dogcat import io as dio
from dogcat import locks
from dogcat import load_config
from dogcat.cli import main

from hostile import one_error


# ---- 7. caches: only our own temp folders; an unknown builder is alive; DDP memory-maps --------------------

def test_cache_cleanup_touches_only_its_own_folders(tmp_path, monkeypatch):
    from datagen import make_folder

    from dogcat.data import cache as C

    data = make_folder(tmp_path / "imgs", classes=("cat", "dog"), n_per_class=3)
    root = tmp_path / "cache"
    root.mkdir()
    name = "x-0123abcd-s37c32-" + "0" * 16
    mine = [root / ".tmp-12345-notacache", root / "photos", root / ".tmp-abc", root / "x-0123abcd-s37c32-zz"]
    for d in mine:
        d.mkdir()
    dead = root / f".tmp-999999-{name}"  # a dead builder's (nobody holds its lock)
    busy = root / f".tmp-999998-{name.replace('x-', 'y-')}"  # a builder we may not ask: counts as alive
    dead.mkdir()
    busy.mkdir()
    real = locks.FileLock._open

    def no_permission(self):
        if "y-0123abcd" in self.path.name:
            raise PermissionError(errno.EACCES, "not yours")
        return real(self)

    monkeypatch.setattr(locks.FileLock, "_open", no_permission)
    cfg = load_config({"train_data_root": str(data), "cache": True, "cache_dir": str(root), "image_size": 32})
    from dogcat.data import build_train_val

    build_train_val(cfg.data)
    left = {p.name for p in root.iterdir()}
    assert {d.name for d in mine} <= left and busy.name in left and dead.name not in left
    assert not any(n.endswith(".lock") for n in left)  # build locks are removed when released
    assert isinstance(build_train_val(cfg.data).train.pixels, torch.Tensor)  # one process: in RAM
    assert isinstance(build_train_val(cfg.data, processes=2).train.pixels, np.memmap)  # DDP: memory-mapped
    # a damaged index of a finished cache is reported and rebuilt, not a traceback
    [built] = [p for p in root.iterdir() if C.NAME.fullmatch(p.name) and not p.name.startswith(".")]
    (built / "index.json").write_text('{"version": 1, "files": 5}')
    with pytest.warns(UserWarning, match=r"packed cache .* is damaged"):
        assert len(build_train_val(cfg.data).train) == 4


# ---- 8. names and trees --------------------------------------------------------------------------------------

def test_non_utf8_names_work_end_to_end(tmp_path, capsys):
    from datagen import make_folder

    root = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=5)
    raw = os.fsencode(root)
    os.rename(os.path.join(raw, b"cat", b"cat_0.jpg"), os.path.join(raw, b"cat", b"caf\xe9.jpg"))  # Latin-1
    os.rename(os.path.join(raw, b"dog"), os.path.join(raw, b"d\xf6g"))  # a class name too
    with open(os.path.join(raw, b"cat", b"bad\xff.jpg"), "wb") as f:
        f.write(b"not an image")
    runs = tmp_path / "runs"
    common = ["--model=smallcnn", "--image-size=32", "--batch-size=4", "--max-epoch=1", "--num-workers=0",
              "--progress=none", f"--runs-root={runs}"]
    assert main(["train", f"--train-data-root={root}", "--env=nu", *common]) == 0
    assert "skipping unreadable image" in capsys.readouterr().err
    run = runs / "nu"
    splits = (run / "splits" / "train.csv").read_bytes() + (run / "splits" / "val.csv").read_bytes()
    assert b"caf\xe9.jpg" in splits and b"d\xf6g" in splits  # the names, byte for byte
    assert b"bad\xff.jpg" in (run / "bad_files.txt").read_bytes()
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(root), f"--output={out}"]) == 0
    assert b"caf\xe9.jpg" in out.read_bytes()
    assert main(["test", str(run), f"--test-data-root={root}"]) == 0
    assert main(["val", str(run), "--report"]) == 0
    # the split files read back as list files, through the packed cache
    assert main(["train", f"--train-list={run / 'splits' / 'train.csv'}", "--val-list="
                 f"{run / 'splits' / 'val.csv'}", "--cache", "--env=again", *common]) == 0
    assert main(["runs", str(runs)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_folder_scans_follow_symlinks_without_looping(tmp_path):
    from datagen import make_folder

    from dogcat.data.folder import find_images, scan

    root = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=3)
    os.symlink(".", root / "cat" / "x")  # ln -s . cat/x
    os.symlink("..", root / "dog" / "up")
    os.symlink(root / "dog", root / "cat" / "dogs")  # a real folder reached twice: scanned once
    samples, names = scan(root)
    assert names == ["cat", "dog"] and len(find_images(root / "cat")) == 6


def test_decompression_bombs_are_bad_files_and_gzip_has_a_limit(tmp_path, monkeypatch):
    from dogcat.data import DataError, decode_image
    from dogcat.data.fashion_mnist import read_idx

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the documented limit, made small
    for fmt in ("PNG", "TIFF"):
        p = tmp_path / f"bomb.{fmt.lower()}"
        Image.new("RGB", (40, 40)).save(p, fmt)  # 1600 pixels: PIL alone would only warn (its error is at 2x)
        img, why = decode_image(p)
        assert img is None and "too large" in why and "1,000" in why
    ok = tmp_path / "ok.png"
    Image.new("RGB", (30, 30)).save(ok)
    assert decode_image(ok)[0] is not None
    # an IDX file whose header announces more than the limit is refused before anything is decompressed
    head = struct.pack(">I3I", 0x0803, 100000, 100, 100)
    (tmp_path / "big.gz").write_bytes(gzip.compress(head + b"\0" * 1000))
    with pytest.raises(DataError, match="more than the"):
        read_idx(tmp_path / "big.gz", limit=1 << 20)
    (tmp_path / "long.gz").write_bytes(gzip.compress(struct.pack(">I1I", 0x0801, 10) + b"\0" * 5000))
    with pytest.raises(DataError, match="does not match its header"):
        read_idx(tmp_path / "long.gz")


# ---- 9. disk full (fault injection; a real full disk is in test_safety_live.py) ----------------------------

def test_disk_full_on_a_checkpoint_keeps_the_old_one_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    from dogcat.engine.checkpoint import save_checkpoint

    state = {"model": {"w": torch.ones(1000)}, "epoch": 1, "global_step": 5, "config": {}}
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, state)
    monkeypatch.setattr(dio, "free_bytes", lambda folder: 1000)  # the free-space check, before writing
    with pytest.raises(dio.DiskFull, match=r"disk full: saving checkpoint last.pt in .*ckpt needs about .* MiB"):
        save_checkpoint(path, {**state, "epoch": 2})
    monkeypatch.undo()

    class Full:  # the disk fills while writing (another job took the space)
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

    monkeypatch.setattr(dio, "_Recorder", lambda f, real=dio._Recorder: real(Full(f)))
    with pytest.raises(dio.DiskFull) as e:
        save_checkpoint(path, {**state, "epoch": 3})
    assert "needs about" in str(e.value) and "free" in str(e.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp left


def test_disk_full_is_one_line_exit_1(tiny_run, tmp_path, monkeypatch, capsys):
    root, run = tiny_run.data, tiny_run.run

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.csv"))

    monkeypatch.setattr("dogcat.engine.evaluator.write_submission", full)
    assert main(["test", str(run), f"--test-data-root={root / 'test'}"]) == 1
    assert "disk full" in one_error(capsys.readouterr().err)


def test_disk_full_on_a_cache_an_export_and_a_log_line(tiny_run, tmp_path, monkeypatch):
    from dogcat.data import prepare
    from dogcat.export import export
    from dogcat.tracking.run import Run

    root, run = tiny_run.data, tiny_run.run
    monkeypatch.setattr(dio, "free_bytes", lambda folder: 4096)
    with pytest.raises(dio.DiskFull, match=r"building the packed cache .* needs about .* MiB, 0.0 MiB free"):
        prepare(root / "train", load_config({"image_size": 32, "cache_dir": str(tmp_path / "c")}).data)
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]  # nothing half-built
    with pytest.raises(dio.DiskFull, match=r"exporting model.onnx"):
        export(str(run), "onnx", tmp_path / "e" / "model.onnx")
    assert not list((tmp_path / "e").iterdir())
    monkeypatch.undo()

    r = Run(tmp_path / "r")
    r.path.mkdir()
    r.log({"kind": "step", "step": 1})

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: Full(real_open(*a, **k)) if str(a[0]).endswith(
        "metrics.jsonl") else real_open(*a, **k))
    with pytest.raises(dio.DiskFull, match="appending to metrics.jsonl"):
        r.log({"kind": "step", "step": 2, "train_loss": 0.5})
    monkeypatch.undo()
    assert [json.loads(x)["step"] for x in (r.path / "metrics.jsonl").read_text().splitlines()] == [1]  # no half line


# ---- 10. malformed files of ours: one line naming the file -------------------------------------------------

@pytest.mark.parametrize("damage, words", [
    (lambda run: (run / "checkpoints" / "best.pt").write_bytes(os.urandom(3000)), ["best.pt", "not a PyTorch file"]),
    (lambda run: torch.save({"format_version": 1, "model": {}, "epoch": 1, "global_step": 1},
                            run / "checkpoints" / "best.pt"), ["best.pt", "missing config"]),
    (lambda run: torch.save({"format_version": 1, "model": {}, "epoch": "x", "global_step": 1, "config": {},
                             "class_names": "ab", "in_chans": 7, "mean": [0], "std": [0]},
                            run / "checkpoints" / "best.pt"), ["best.pt", "class_names", "in_chans", "epoch"]),
])
def test_a_damaged_checkpoint_is_one_line(tiny_run, tmp_path, damage, words, capsys):
    run = tiny_run.run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy)
    for cmd in (["val", str(copy)], ["predict", str(copy), str(copy)], ["export", str(copy)]):
        assert main(cmd) == 2
        line = one_error(capsys.readouterr().err)
        assert all(w in line for w in words), line


def test_inspect_of_odd_files_is_one_line(tmp_path, capsys):
    for name, obj in (("list.pt", [1, 2]), ("odd.pt", {"model": {"w": torch.zeros(0), "n": 3}, "grads": 5})):
        torch.save(obj, tmp_path / name)
    assert main(["inspect", str(tmp_path / "list.pt")]) == 2
    assert "no state_dict" in one_error(capsys.readouterr().err)
    assert main(["inspect", str(tmp_path / "odd.pt")]) == 0


def test_damaged_run_files_are_one_line_and_runs_lists_the_rest(tiny_run, tmp_path, capsys):
    run = tiny_run.run
    runs = tmp_path / "runs"
    for name in ("good", "broken", "odd"):
        shutil.copytree(run, runs / name)
    (runs / "broken" / "manifest.json").write_text("[1, 2")
    (runs / "odd" / "manifest.json").write_text(json.dumps({"previous_sessions": 5, "start_unix": "x"}))
    with open(runs / "good" / "metrics.jsonl", "a") as f:
        f.write("5\n[]\n")  # JSON, but not records
    assert main(["runs", str(runs)]) == 0
    cap = capsys.readouterr()
    assert "good" in cap.out and "broken" not in cap.out
    assert re.search(r"warning: skipping run .*broken: manifest .*manifest.json is unreadable", cap.err), cap.err
    assert main(["runs", "show", str(runs / "broken")]) == 2
    assert "manifest.json" in one_error(capsys.readouterr().err)
    (runs / "good" / "config.yaml").write_text("optim: [unclosed")
    assert main(["train", f"--resume={runs / 'good'}"]) == 2
    assert "config.yaml" in one_error(capsys.readouterr().err)


def test_damaged_caches_of_ours_warn_and_are_rebuilt(tmp_path, monkeypatch):
    from dogcat.engine import precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "dogcat" / "precision.json"
    cache.parent.mkdir()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    for bad in ("[1, 2]", "{not json", json.dumps({"k": {"seconds": "fast"}})):
        cache.write_text(bad)
        choice, info = precision.choose_precision(model, torch.device("cpu"), (3, 8, 8), 2, False, "m", 2,
                                                  steps=1, options=("fp32", "bf16"))
        assert choice in ("fp32", "bf16") and not info["cached"]
        assert isinstance(json.loads(cache.read_text()), dict)  # written again, whole


# ---- 11. the smaller items -----------------------------------------------------------------------------------

def test_ctl_debug_runs_on_the_unwrapped_model(monkeypatch, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dogcat.engine import debug
    from dogcat.engine.step import LastBatch

    seen = []
    monkeypatch.setattr(debug, "debug_dump", lambda model, *a: seen.append(model) or a[-1])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        inner = torch.nn.Linear(4, 2)
        last = LastBatch(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), ["a", "b"], torch.zeros(()))
        step = SimpleNamespace(model=DDP(inner), optimizer=None, last=last)
        assert "debug dump" in debug.debug_step(step, None, tmp_path / "dump")
    finally:
        dist.destroy_process_group()
    assert seen == [inner]  # rank 0 alone runs this forward: never through the DDP wrapper


def test_temp_files_cannot_be_planted(tmp_path):
    from dogcat.engine.checkpoint import link_or_copy

    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "run" / "config.yaml"
    target.parent.mkdir()
    for name in (f".config.yaml.tmp-{os.getpid()}", "config.yaml.tmp", ".config.yaml.tmp", ".best.pt.tmp-"
                 f"{os.getpid()}"):  # the names the old code used: predictable, opened with plain open()
        os.symlink(victim, target.parent / name)
    dio.atomic_write_text(target, "a: 1\n")
    (target.parent / "last.pt").write_bytes(b"x" * 10)
    link_or_copy(target.parent / "last.pt", target.parent / "best.pt")
    assert victim.read_text() == "precious" and target.read_text() == "a: 1\n"
    assert (target.parent / "best.pt").read_bytes() == b"x" * 10


def test_config_yaml_is_whole_or_absent(tmp_path, monkeypatch):
    from dogcat.tracking.run import Run

    def boom(*a):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(dio.os, "replace", boom)
    with pytest.raises(OSError, match="I/O error"):
        Run.create(load_config({"run_dir": str(tmp_path / "r")}))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["lock"]  # no config.yaml, no half of one


def test_git_is_asked_only_about_our_repository_and_runs_no_configured_program(tmp_path):
    from dogcat.tracking.manifest import git_info

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    marker = tmp_path / "ran"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    for name, code in (("foreign", "vendor/dogcat"), ("ours", "src/dogcat")):
        repo = tmp_path / name
        (repo / code).mkdir(parents=True)
        (repo / code / "__init__.py").write_text("x = 1\n")
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
        for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"], ["config", "core.fsmonitor", str(hook)],
                     ["config", "diff.external", str(hook)]):
            subprocess.run(["git", *args], cwd=repo, check=True, env=env)
        (repo / code / "__init__.py").write_text("x = 2\n")  # uncommitted: git diff runs
        info = git_info(tmp_path / name, code_dir=repo / code)
        if name == "foreign":
            assert info["commit"] is None and "another repository" in info["error"]
        else:
            assert info["commit"] and info["dirty"] and "x = 2" in (tmp_path / name / "manifest.patch").read_text()
    assert not marker.exists()
