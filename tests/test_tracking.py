"""Experiment memory: TensorBoard events, manifest.json, data fingerprints, `dogcat runs`, the HTML report."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datagen import tiny_options
from dogcat import evaluate, load_config, train
from dogcat.cli import main
from dogcat.data import build_train_val
from dogcat.tracking.manifest import data_fingerprint, git_info
from dogcat.tracking.listing import find_runs, load_run

EVERYTHING = {k: 0 for k in ("scalars", "images", "tensors", "histograms", "compressedHistograms", "audio")}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cat_dog_data(root: Path) -> Path:
    """cat/dog class folders with a separate val folder in which two cats are filed as dogs, so that
    every model makes validation mistakes (the misclassified-image outputs always have something)."""
    from datagen import make_folder

    make_folder(root / "train", classes=("cat", "dog"), n_per_class=10)
    make_folder(root / "val", classes=("cat", "dog"), n_per_class=4)
    for i in (0, 1):
        shutil.move(root / "val" / "cat" / f"cat_{i}.jpg", root / "val" / "dog" / f"cat_{i}.jpg")
    return root


def cfg_for(root: Path, runs: Path, **kw):
    return load_config(tiny_options(root, runs, **kw))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Two finished runs that differ in lr: ``runs/a`` and ``runs/b``."""
    root = cat_dog_data(tmp_path_factory.mktemp("catdog"))
    runs = root / "runs"
    a = train(cfg_for(root, runs, env="a", max_epoch=2))
    b = train(cfg_for(root, runs, env="b", max_epoch=2, lr=0.02))
    return root, runs, a, b


def accumulator(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


def test_tensorboard_scalars_images_pr_curve_hparams(tracked):
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = tracked[2].run_dir
    acc = accumulator(run)
    tags = acc.Tags()
    required = {"train/loss", "train/lr", "train/throughput", "val/loss", "val/accuracy", "val/logloss"}
    assert required <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in records(run, "step")]
    epochs = records(run, "epoch")
    assert [(e.step, e.value) for e in acc.Scalars("val/accuracy")] == [
        (r["step"], pytest.approx(r["val_accuracy"])) for r in epochs]
    assert {"train/augmented_inputs", "val/misclassified", "val/confusion_matrix"} <= set(tags["images"])
    assert len(acc.Images("val/misclassified")) == len(epochs) == len(acc.Images("val/confusion_matrix")) == 2
    assert acc.Images("train/augmented_inputs")[0].width > 32 * 4  # a grid of several inputs
    assert {"val/pr_curve_dog", "val/misclassified/text_summary"} <= set(tags["tensors"])
    caption = acc.Tensors("val/misclassified/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert re.search(r"\| (cat \| dog|dog \| cat) \|", caption)  # true and predicted labels

    content = acc.PluginTagToContent("hparams")  # one session, in the run's own event file
    exp = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    end = HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert start.hparams["lr"].number_value == pytest.approx(0.01) and start.hparams["model"].string_value == "smallcnn"
    assert "runs_root" not in start.hparams and end.status == Status.Value("STATUS_SUCCESS")
    metrics = {m.name.tag for m in exp.metric_infos}
    assert {"hparam/val_accuracy", "hparam/val_loss", "hparam/best_val_accuracy"} <= metrics
    assert acc.Scalars("hparam/val_accuracy")[-1].value == pytest.approx(epochs[-1]["val_accuracy"])
    assert not [p for p in run.rglob("events.out.tfevents.*") if p.parent != run]  # no add_hparams sub-folder


def test_resume_is_one_continuous_curve(tmp_path):
    """A killed run may have logged steps after its last checkpoint: the resumed run's purge drops them."""
    from torch.utils.tensorboard import SummaryWriter

    root = cat_dog_data(tmp_path / "data")
    first = train(cfg_for(root, tmp_path / "runs", env="r", max_epoch=2, max_steps=3))
    assert first.stopped
    with SummaryWriter(str(first.run_dir)) as w:  # the unsaved tail of a killed process
        w.add_scalar("train/loss", 99.0, 4)
        w.add_scalar("train/loss", 99.0, 6)
    time.sleep(1.1)  # event files are named by the second: keep the resumed one sorting after
    train(load_config({"resume": str(first.run_dir)}, config_file=first.run_dir / "config.yaml"))
    acc = accumulator(first.run_dir)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [r["step"] for r in records(first.run_dir, "step")] == sorted(set(steps))
    assert 99.0 not in [e.value for e in acc.Scalars("train/loss")]
    assert len(acc.Images("train/augmented_inputs")) == 1  # shown once, at the start of the run
    m = json.loads((first.run_dir / "manifest.json").read_text())
    assert m["status"] == "finished" and [s["status"] for s in m["previous_sessions"]] == ["stopped"]


def test_manifest_fields(tracked):
    run = tracked[2].run_dir
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "finished" and m["exit"] == {"status": "finished", "code": 0, "error": None}
    assert m["start_time"] <= m["end_time"] and m["duration_s"] > 0 and isinstance(m["pid"], int)
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["python"].count(".") == 2
    assert {"cuda", "cudnn", "torchvision"} <= set(m["versions"]) and m["devices"]["cpu"] and m["device"] == "cpu"
    assert any(p.startswith("torch==") for p in m["pip_freeze"]) and m["host"] and m["command"]
    assert m["seed"] == 0 and m["data"]["layout"] == "folder" and re.fullmatch(r"[0-9a-f]{64}", m["data"]["sha256"])
    assert m["data"]["count"] == 28 and m["splits"] == ["splits/train.csv", "splits/val.csv"]
    assert all((run / s).is_file() for s in m["splits"])
    git = m["git"]
    if git.get("commit"):  # this checkout is a git repository: commit, and the patch when there are changes
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"])
        assert git["dirty"] == (run / "manifest.patch").is_file()
    else:
        assert git["error"]


def test_manifest_outside_git(tmp_path):
    info = git_info(tmp_path, code_dir=tmp_path)
    assert info["commit"] is None and "not a git repository" in info["error"]
    assert not (tmp_path / "manifest.patch").exists()


def test_manifest_git_commit_and_patch_reproduce_the_code(tmp_path):
    """Both branches of the git record on a repository made here: clean (commit, no patch), then dirty (the
    patch, applied to a fresh clone of the commit, gives the code that ran)."""
    repo, code = tmp_path / "repo", tmp_path / "repo" / "src" / "dogcat"
    code.mkdir(parents=True)
    (code / "engine.py").write_text("LR = 0.1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    clean = git_info(tmp_path / "run1", code_dir=code)
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"]) and clean["dirty"] is False and clean["patch"] is None
    (code / "engine.py").write_text("LR = 0.2\n")  # an uncommitted change
    run = tmp_path / "run2"
    run.mkdir()
    dirty = git_info(run, code_dir=code)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True and dirty["patch"] == "manifest.patch"
    subprocess.run(["git", "clone", "-q", str(repo), str(tmp_path / "again")], check=True)
    subprocess.run(["git", "apply", str(run / "manifest.patch")], cwd=tmp_path / "again", check=True)
    assert (tmp_path / "again" / "src" / "dogcat" / "engine.py").read_text() == "LR = 0.2\n"
    # a package folder that is not the repository's src/dogcat (an installed copy inside someone's repo): not asked
    assert "another repository" in git_info(tmp_path, code_dir=code.parent)["error"]


def test_fingerprint_changes_when_one_image_changes(tmp_path, fmnist_dir):
    from datagen import make_folder

    root = make_folder(tmp_path / "imgs", classes=("cat", "dog"), n_per_class=6)
    cfg = load_config({"train_data_root": str(root), "val_split": 0.3})
    fp = lambda: data_fingerprint(build_train_val(cfg.data), cfg)["sha256"]  # noqa: E731
    before = fp()
    assert fp() == before  # stable
    one = root / "cat" / "cat_3.jpg"
    original = one.read_bytes()
    one.write_bytes((root / "dog" / "dog_0.jpg").read_bytes())  # other content, other size
    assert len(original) != one.stat().st_size and fp() != before
    one.write_bytes(original)
    assert fp() == before
    shutil.move(one, root / "dog" / "cat_3.jpg")  # relabelled
    assert fp() != before

    fcfg = load_config({"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28})
    fbefore = data_fingerprint(build_train_val(fcfg.data), fcfg)
    idx = fmnist_dir / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(idx.read_bytes()))
    raw[-1] ^= 0xFF  # one pixel of the last image
    idx.write_bytes(gzip.compress(bytes(raw), mtime=0))
    after = data_fingerprint(build_train_val(fcfg.data), fcfg)
    assert after["sha256"] != fbefore["sha256"] and len(after["files"]) == 2


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_runs_table_shows_a_killed_run_as_dead(tracked, fmnist_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = {"fashion_mnist_root": fmnist_dir, "dataset": "fashion-mnist", "image_size": 28, "model": "smallcnn",
            "batch_size": 16, "max_epoch": 60, "print_freq": 1, "progress": "none", "num_workers": 0,
            "runs_root": runs, "env": "killed"}
    proc = subprocess.Popen([sys.executable, "-m", "dogcat", "train", "--debug-file=None",
                             *[f"--{k.replace('_', '-')}={v}" for k, v in args.items()]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = runs / "killed"
    t0 = time.time()
    while not (run / "metrics.jsonl").exists() or '"step"' not in (run / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 90, "training did not start"
        time.sleep(0.05)
    assert load_run(run).status == "running"  # alive
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "status").read_text().strip() == "running"  # nobody could write otherwise
    assert load_run(run).status == "dead"
    assert main(["runs", str(runs)]) == 0
    assert re.search(r"killed\s+dead\s+smallcnn\s+fashion-mnist", capsys.readouterr().out)

    assert main(["runs", str(tracked[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["name", "status", "model", "data", "epochs", "best", "duration"]
    assert lines[0].split()[7:] == ["lr"]  # only the option that differs (env names the place: left out)
    assert re.match(r"a\s+finished\s+smallcnn\s+folder:train \([0-9a-f]{8}\)\s+2/2\s+val_accuracy", lines[1])
    assert lines[2].startswith("b ") and lines[2].rstrip().endswith("0.02")
    assert [r.name for r in find_runs(tracked[1])] == ["a", "b"]


def test_runs_show_and_diff(tracked, capsys):
    _, runs, a, b = tracked
    assert main(["runs", "show", str(a.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "config:" in out and "git commit:" in out and "val_accuracy" in out and "sessions:" in out
    assert main(["runs", "diff", "a", "b", f"--runs-root={runs}"]) == 0
    out = capsys.readouterr().out
    conf = out.split("config differences:")[1].split("manifest differences:")[0]
    assert re.search(r"\blr\s+0\.01\s+0\.02", conf) and "env" in conf and "batch_size" not in conf
    manifest = out.split("manifest differences:")[1].split("final metrics:")[0]
    assert "data fingerprint" not in manifest and "version torch" not in manifest  # same data, same torch
    metrics = out.split("final metrics:")[1]
    assert re.search(r"val_accuracy\s+\S+\s+\S+", metrics) and "best val_accuracy" in metrics
    assert main(["runs", "diff", "a"]) == 2  # usage error


def _render(index: Path, tmp_path: Path) -> tuple[str, Path]:
    """Chromium's DOM after load, each <img> marked with whether it decoded; and a screenshot."""
    probe = index.with_name("probe.html")  # next to index.html, so relative paths resolve the same way
    script = ("<script>addEventListener('load',()=>{for(const i of document.images)"
              "i.dataset.loaded=(i.complete&&i.naturalWidth>0)?'yes':'no';document.body.dataset.checked='1'})"
              "</script></body>")
    probe.write_text(index.read_text().replace("</body>", script))
    base = [CHROMIUM, *CHROMIUM_FLAGS]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'chrome-a'}", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'chrome-b'}", "--hide-scrollbars", "--window-size=1200,2400",
                    f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120)
    return dom, shot


def test_report_renders_in_chromium(tracked, tmp_path):
    run = tracked[3].run_dir
    assert main(["report", str(run)]) == 0
    index = run / "report" / "index.html"
    page = index.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert {"loss.png", "accuracy.png", "lr.png", "confusion.png", "mistakes.png"} <= set(srcs)
    assert all((index.parent / s).is_file() and "/" not in s for s in srcs)  # relative, next to index.html
    assert "precision" in page and "git commit" in page and "lr: 0.02" in page
    res = evaluate(str(tracked[2].run_dir), {"report": True})  # `dogcat val RUN --report`
    assert Path(res["report"]).is_file() and "mistakes.png" in Path(res["report"]).read_text()
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (`make test` installs Debian's chromium when apt is usable)")
    dom, shot = _render(index, tmp_path)
    assert 'data-checked="1"' in dom, dom[-2000:]
    marks = re.findall(r'<img [^>]*data-loaded="(\w+)"', dom)
    assert len(marks) == len(srcs) and set(marks) == {"yes"}, marks
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
