"""DDP through real torchrun processes on the CPU (gloo): one run folder, exact validation counts,
checkpoints that load in one process, multi-node rendezvous, resume across world sizes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dogcat import evaluate, load_config, train
from dogcat.engine.checkpoint import load_checkpoint


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from datagen import make_folder

    root = tmp_path_factory.mktemp("ddp")
    return make_folder(root / "train", classes=("ant", "bee"), n_per_class=17, sizes=(32, 48))


def args(images: Path, run_dir: Path, **kw) -> list[str]:
    opts = {"train_data_root": str(images), "model": "smallcnn", "image_size": 24, "batch_size": 8,
            "val_split": 0.3, "max_epoch": 2, "num_workers": 0, "print_freq": 1, "progress": "plain",
            "optimizer": "sgd", "lr": 0.05, "scheduler": "none", "debug_file": "None", "run_dir": str(run_dir), **kw}
    return [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]


def torchrun(*extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def epochs(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "epoch"]


def test_two_processes_one_run_folder(images, tmp_path):
    # no --run-dir: the default name has a timestamp, which each rank would compute for itself
    argv = [a for a in args(images, tmp_path) if not a.startswith("--run-dir")] + [f"--runs-root={tmp_path / 'runs'}"]
    torchrun("--standalone", "--nproc-per-node=2", "-m", "dogcat", "train", *argv)
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1  # one folder, not one per rank
    run = folders[0]
    assert (run / "status").read_text().strip() == "finished"
    val_rows = sum(1 for _ in csv.DictReader((run / "splits" / "val.csv").open(newline="")))
    assert all(r["val_count"] == val_rows for r in epochs(run))  # each validation image exactly once
    setup = next(r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if r.get("event") == "setup")
    assert setup["world_size"] == 2 and setup["global_batch"] == 16
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in ck["model"]) and len(ck["rng"]) == 2
    assert evaluate(str(run))["count"] == val_rows  # loads and runs in a single process

    single = train(load_config({a[2:].split("=")[0]: a.split("=", 1)[1] for a in
                                args(images, tmp_path / "single", batch_size=16)}))
    one, two = single.history[0]["train_loss"], epochs(run)[0]["train_loss"]
    # Why a loose bound: both runs see the same samples and augmentations per global batch of 16, but rank r
    # takes the batch's positions r, r + 2, ... and BatchNorm normalises over those 8 images rather than all
    # 16 (SyncBatchNorm is GPU-only), so no single-process run reproduces the ranks' statistics (gradient
    # accumulation would split the batch into positions 0-7 and 8-15 instead). Measured: 0.53 single against
    # 0.66 on 2 ranks with the grid-pool smallcnn, a 25 % gap from BatchNorm alone; 35 % leaves room for the
    # thread-count noise of a loaded machine. What it still catches: a learning rate scaled by the world size,
    # a loss summed instead of averaged over ranks (2x), or a rank training on garbage (loss ~ ln 2 = 0.69
    # stays within it, hence the exact val_count and global_batch checks above).
    assert two == pytest.approx(one, rel=0.35)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_two_nodes_c10d_rendezvous(images, tmp_path):
    """Two torchrun agents meet through a c10d store, as two machines would. The first hosts the store
    (is_host=1), as the machine named in --rdzv-endpoint does; --local-addr keeps the workers on loopback."""
    run, port = tmp_path / "nodes", _port()
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=dogcat-test", "--local-addr=127.0.0.1"]
    script = ["-m", "dogcat", "train", *args(images, run, max_epoch=1)]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "LOGLEVEL": "INFO"}  # where it hangs, if it ever does
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = []
    for i, log in enumerate(logs):  # output to files: a full, unread pipe would block its node
        with log.open("w") as out:
            nodes.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *common,
                                           f"--rdzv-conf=is_host={int(i == 0)}", *script],
                                          stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        for n in nodes:
            n.wait(timeout=240)
    except subprocess.TimeoutExpired:
        for n in nodes:  # SIGABRT: faulthandler prints every thread's stack into the logs
            for pid in [*_descendants(n.pid), n.pid]:  # one at a time: their stacks share the log
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
                time.sleep(1)
        for n in nodes:
            n.kill()
            n.wait()
    report = "\n".join(f"--- node {i} (exit {n.returncode}):\n{log.read_text()[-6000:]}"
                        for i, (n, log) in enumerate(zip(nodes, logs)))
    assert [n.returncode for n in nodes] == [0, 0], report
    assert (run / "status").read_text().strip() == "finished" and len(epochs(run)) == 1, report


WORKER = """
import os, sys, threading
os.environ["OMP_NUM_THREADS"] = "1"  # no OpenMP pool: every native thread left would be gloo's
from dogcat import load_config, train
train(load_config(dict(a[2:].split("=", 1) for a in sys.argv[1:])))
native = len(os.listdir("/proc/self/task")) - threading.active_count()
print(f"rank {os.environ['RANK']}: {native} threads outside Python", flush=True)
sys.exit(native != 0)
"""


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_group_threads_end_before_exit(images, tmp_path):
    """gloo's worker threads end inside train(): left to interpreter exit, one holding the last collective's
    tensors needs the GIL then and aborts the process (seen in about one run in 15)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = torchrun("--standalone", "--nproc-per-node=2", str(script), *args(images, tmp_path / "t", max_epoch=1))
    assert r.stdout.count("0 threads outside Python") == 2, r.stdout


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_resume_two_processes_into_one(images, tmp_path):
    run = tmp_path / "cut"
    torchrun("--standalone", "--nproc-per-node=2", "-m", "dogcat", "train", *args(images, run, max_steps=2))
    assert (run / "status").read_text().strip() == "stopped"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["state"]["world_size"] == 2 and ck["state"]["global_step"] == 2
    result = train(load_config({"resume": str(run)}, config_file=run / "config.yaml"))
    assert (run / "status").read_text().strip() == "finished" and [r["epoch"] for r in result.history] == [1, 2]


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_nproc_shortcut_launches_torchrun(images, tmp_path):
    run = tmp_path / "short"
    r = subprocess.run([sys.executable, "-m", "dogcat", "train", *args(images, run, max_epoch=1), "--nproc=2"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed.run" in r.stderr and r.stdout.count("run folder:") == 1 and json.loads(
        next(x for x in (run / "metrics.jsonl").read_text().splitlines() if '"setup"' in x))["world_size"] == 2
