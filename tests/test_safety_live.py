"""Issue 14 with real processes, where a process is the point: the run lock against a live training and after
kill -9, the control inbox fed hostile files, pid reuse, two cache builders at once, a real full disk (a tmpfs
in a private mount namespace; skipped where that is not allowed) and the --nproc relaunch's sys.path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from datagen import tiny_options
from dogcat.cli import main
from dogcat.control import running_pid

from hostile import one_error

def opts(fmnist_dir: Path, runs: Path, **kw) -> list[str]:
    o = tiny_options(fmnist_dir, runs, **kw)
    return [f"--{k.replace('_', '-')}={v}" for k, v in o.items() if v is not None]


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    t0 = time.time()
    while not cond():
        assert proc is None or proc.poll() is None, proc.communicate() if proc else ""
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_lock_inbox_and_kill_9_against_a_live_training(fmnist_dir, tmp_path, capsys):
    run = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-m", "dogcat", "train", *opts(fmnist_dir, tmp_path, max_epoch=500),
                             "--env=live"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "control" / "pid").exists(), proc)
        # 3. one writer per run folder: a resume (here and in another process) or a new run into it is refused
        before = len(records(run))
        assert main(["train", f"--resume={run}"]) == 2
        line = one_error(capsys.readouterr().err)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in line and "in use" in line
        assert main(["train", *opts(fmnist_dir, tmp_path), f"--run-dir={run}"]) == 2
        assert f"pid {proc.pid}" in one_error(capsys.readouterr().err)
        other = subprocess.run([sys.executable, "-m", "dogcat", "train", f"--resume={run}"], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
        assert other.returncode == 2 and f"pid {proc.pid}" in one_error(other.stderr)
        assert len(records(run)) >= before and (run / "status").read_text().strip() == "running"  # untouched

        # 5. hostile inbox files are answered with an error and never stop the training
        inbox, done = run / "control" / "inbox", run / "control" / "done"
        (inbox / "a.json").write_text(json.dumps({"command": 5}))
        (inbox / "b.json").write_text("{oops")
        os.mkfifo(inbox / "c.json")
        (inbox / "d.json").mkdir()
        (inbox / "e.json").write_text(json.dumps({"command": "stop", "sent": 0}))  # from before this process
        (inbox / "f.json").write_text(json.dumps({"command": "explode", "sent": time.time()}))
        (inbox / "g.json").symlink_to("/dev/zero")
        names = ["a.json", "b.json", "c.json", "d.json", "e.json", "f.json", "g.json"]
        wait_for(lambda: all((done / n).exists() for n in names), proc)
        answers = {n: json.loads((done / n).read_text()) for n in names}
        assert not any(a["ok"] for a in answers.values()), answers
        assert "malformed command" in answers["a.json"]["message"] and "discarded" in answers["e.json"]["message"]
        assert "unknown command 'explode'" in answers["f.json"]["message"]
        assert not any(inbox.iterdir()) and proc.poll() is None

        # 4. `ctl set` shares the config's ranges, and sets values: lr 0, then 0.002, is 0.002
        assert main(["ctl", str(run), "set", "lr=nan", "--timeout=60"]) == 2
        assert "out of range" in capsys.readouterr().out
        assert main(["ctl", str(run), "set", "lr=0", "--timeout=60"]) == 0
        assert main(["ctl", str(run), "set", "lr=0.002", "--timeout=60"]) == 0
        step = [r for r in records(run) if r.get("event") == "control"][-1]["step"]
        wait_for(lambda: any(r.get("kind") == "step" and r["step"] > step for r in records(run)), proc)
        assert all(r["lr"] == pytest.approx(0.002) for r in records(run) if r.get("kind") == "step" and r["step"] > step)
        assert main(["ctl", str(run), "save", "--timeout=60"]) == 0
        capsys.readouterr()

        # kill -9: the kernel drops the lock; a reused pid is not taken for the training
        start = json.loads((run / "control" / "pid").read_text())["start"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert (run / "status").read_text().strip() == "running"  # nobody could write otherwise
    (run / "control" / "pid").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                     "start": start}))  # our pid: alive, but not that process
    assert running_pid(run / "control") is None  # the inbox folder (RunFolder.control)
    t0 = time.time()
    assert main(["ctl", str(run), "eval", "--timeout=60"]) == 1  # at once, not after 60 s of waiting
    assert time.time() - t0 < 10 and "no training process is running" in capsys.readouterr().err
    # a command queued for the dead process does not fire in the next session
    (run / "control" / "inbox" / "0-queued.json").write_text(json.dumps({"command": "stop", "sent": time.time()}))
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert main(["train", f"--resume={run}", f"--max-epoch={ck['state']['epoch'] + 1}"]) == 0
    assert (run / "status").read_text().strip() == "finished"
    assert "discarded" in json.loads((run / "control" / "done" / "0-queued.json").read_text())["message"]


BUILDER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from dogcat.data import cache as C
    from dogcat.data.folder import scan

    real = C._decode
    C._decode = lambda job: (time.sleep(0.1), real(job))[1]  # a slow build, so the other one has to wait
    data, root, me, other = sys.argv[1:]
    samples, _ = scan(Path(data))
    Path(me).touch()
    while not Path(other).exists():  # start together
        time.sleep(0.01)
    packed = C.ensure(samples, data, 37, 32, root, workers=1, progress=False)
    print("PATH", packed.path, len(packed.rows))
""")


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_two_processes_build_one_cache_and_share_it(tmp_path):
    from datagen import make_folder

    data = make_folder(tmp_path / "imgs", classes=("cat", "dog"), n_per_class=8)
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [subprocess.Popen([sys.executable, str(script), str(data), str(tmp_path / "cache"), str(me), str(other)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in ((a, b), (b, a))]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    text = "".join(o for o, _ in outs)
    assert text.count("building the packed cache of") == 1 and text.count("waiting for pid") == 1, text
    paths = {ln for o, _ in outs for ln in o.splitlines() if ln.startswith("PATH")}
    assert len(paths) == 1 and paths.pop().endswith(" 16")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")) == []  # no lock, no temp


FULL_DISK = textwrap.dedent("""
    import errno, os, sys
    from pathlib import Path
    from dogcat import io as dio
    from dogcat.cli import main
    from dogcat.models import register
    from dogcat.models.smallcnn import SmallCNN

    disk, fmnist, variant = sys.argv[1:]
    leave = {"precheck": 0, "write": 200_000}[variant]

    def fill():  # unbuffered: a buffered file would try the failed write again when it is closed
        fd = os.open(os.path.join(disk, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\\0" * (1 << 16))
        except OSError as e:
            assert e.errno == errno.ENOSPC
        os.ftruncate(fd, max(0, os.lseek(fd, 0, os.SEEK_END) - leave))
        os.close(fd)

    class Filler(SmallCNN):
        calls = 0

        def forward(self, x):
            if self.training:
                Filler.calls += 1
                if Filler.calls == 5:  # after the checkpoint of step 4: another job takes the disk
                    fill()
            return super().forward(x)

    register("filler", "fills the disk")(lambda num_classes, in_chans=1, pretrained=None: Filler(num_classes, in_chans))
    if variant == "write":  # the space estimate is wrong: the disk fills while torch.save writes
        dio.ensure_free = lambda *a, **k: None
    sys.exit(main(["train", f"--fashion-mnist-root={fmnist}", "--dataset=fashion-mnist", "--image-size=28",
                   "--model=filler", "--batch-size=16", "--val-split=0.2", "--print-freq=1000", "--progress=none",
                   "--num-workers=0", "--max-epoch=3", "--save-every-steps=2", f"--runs-root={disk}/runs",
                   f"--env={variant}"]))
""")


def _private_tmpfs_works(mnt: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"], capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("variant", ["precheck", pytest.param("write", marks=pytest.mark.slow)])
def test_a_real_full_disk_fails_in_one_line_keeping_the_last_checkpoint(fmnist_dir, tmp_path, variant):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _private_tmpfs_works(disk):
        pytest.skip("needs unshare -m and mount -t tmpfs (a private mount namespace)")
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    # the tmpfs lives in the child's own mount namespace: it goes away with it, whatever happens; the run folder
    # is copied out before that
    out = tmp_path / "out"
    cmd = (f"mount -t tmpfs -o size=12m tmpfs {disk} && {sys.executable} {script} {disk} {fmnist_dir} {variant}; "
           f" code=$?; rm -f {disk}/filler; cp -a {disk}/runs {out}; exit $code")
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    line = one_error(r.stderr)
    run = out / variant
    assert f"disk full: saving checkpoint last.pt in {disk}/runs/{variant}/checkpoints needs about" in line, line
    assert "free" in line and "nothing half-written" in line
    assert (run / "status").read_text().strip() == "failed"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["exit"]["status"] == "failed" and "disk full" in manifest["exit"]["error"]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # the previous one, whole
    assert ck["state"]["global_step"] == 4
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name] and not (run / ".disk-reserve").exists()
    assert all(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())  # no half line


def test_nproc_relaunch_does_not_import_from_the_current_folder(tmp_path):
    from dogcat.engine.distributed import launch_command

    if sys.version_info < (3, 11):
        pytest.skip("-P / PYTHONSAFEPATH need Python 3.11")
    evil = tmp_path / "cwd"
    (evil / "dogcat").mkdir(parents=True)
    marker = tmp_path / "ran"
    (evil / "dogcat" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (evil / "dogcat" / "__main__.py").write_text("")
    plain = subprocess.run([sys.executable, "-m", "dogcat", "help"], cwd=evil, capture_output=True, text=True)
    assert marker.exists() and plain.returncode == 0  # the danger: `python -m` imports from the current folder
    marker.unlink()
    cmd, env = launch_command(1, ["--help"])
    r = subprocess.run(cmd, cwd=evil, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "usage: dogcat" in r.stdout, r.stderr[-2000:]
    assert not marker.exists()  # neither torchrun nor its worker ran the planted package
