"""Issue 21 item 8: places that cannot be written. Every command on a read-only runs folder (a real read-only bind
mount in a private mount namespace: tests run as root, which permissions would not stop) and every output option
that names a folder where a file goes, or a path below a file, ends in one line naming the path: exit 1 for an
outside cause (a read-only or full disk, no permission), exit 2 for a path the command line got wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from datagen import make_fmnist_idx, make_kaggle, tiny_options
from dogcat.cli import main

from hostile import one_error

import dogcat

SRC = str(Path(dogcat.__file__).parents[1])  # the sources under test, in the subprocess too


def argv(opts: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not None]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: Kaggle-layout data, a trained run runs/r, a sweep space and a finished little sweep runs/s."""
    from dogcat import load_config, train

    root = tmp_path_factory.mktemp("places")
    make_kaggle(root / "data", n_per_class=6, n_test=3, bad=False, sizes=(40, 60))
    opts = tiny_options(root / "data", root / "runs", env="r")
    train(load_config(opts))
    fm = make_fmnist_idx(root / "fm", n_train=40, n_test=8)
    recipe = {"data": {"dataset": "fashion-mnist", "fashion_mnist_root": str(fm), "image_size": 28, "batch_size": 16,
                       "num_workers": 0, "val_split": 0.25}, "model": {"model": "smallcnn"},
              "train": {"max_epoch": 1, "progress": "none", "keep_top_k": 0}, "search": {"lr": {"choice": [0.01]}}}
    (root / "space.yaml").write_text(yaml.safe_dump(recipe))
    optuna = pytest.importorskip("optuna")
    (root / "runs" / "s").mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{root / 'runs' / 's' / 'study.db'}")
    for i in range(3):
        t = study.ask()
        t.suggest_float("lr", 1e-3, 1e-1)
        study.tell(t, 1.0 - i / 10)
    (root / "runs" / "s" / "sweep.json").write_text(json.dumps({"name": "s", "storage": None, "monitor": "val_loss"}))
    (root / "afile").write_text("a regular file\n")
    return root


def commands(ws: Path) -> list[tuple[list[str], int]]:
    """(argv, the exit status expected on a read-only workspace) for every command."""
    run, test = ws / "runs" / "r", ws / "data" / "test"
    tiny = argv(tiny_options(ws / "data", ws / "runs"))
    return [
        (["train", *tiny, f"--runs-root={ws / 'runs'}"], 1),
        (["train", f"--resume={run}", "--max-epoch=2"], 1),
        (["val", str(run)], 1),
        (["test", str(run), f"--test-data-root={test}"], 1),
        (["predict", str(run), str(test), f"--output={ws / 'p.csv'}"], 1),
        (["export", str(run), "--format=safetensors"], 1),
        (["explain", str(run), str(test / "1.jpg")], 1),
        (["summary", "--model=smallcnn", "--image-size=32"], 0),
        (["lr-find", *tiny, "--steps=3"], 1),
        (["ctl", str(run), "save", "--timeout=1"], 1),
        (["inspect", str(run)], 0),
        (["runs", str(ws / "runs")], 0),
        (["report", str(run)], 1),
        (["sweep", str(ws / "space.yaml"), f"--runs-root={ws / 'runs'}", "--trials=1"], 1),
        (["sweep", "show", str(ws / "runs" / "s")], 1),
        # the cache folder named is no cache folder: refused as before (it says to pass another --cache-dir)
        (["prepare", str(ws / "data" / "train"), f"--cache-dir={ws / 'cache'}", "--image-size=32"], 2),
        (["stats", str(ws / "data" / "train")], 0),
        (["models"], 0),
        (["completion", "bash"], 0),
    ]


RUN_ALL = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from dogcat.cli import main
    out = []
    for args in json.loads(sys.argv[1]):
        err, res = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(res):
            try:
                rc = main(args)
            except BaseException:
                rc = "raised"
                traceback.print_exc(file=err)
        out.append({"argv": args, "rc": rc, "err": err.getvalue()})
    print(json.dumps(out))
""")


@pytest.mark.slow  # 15-30 s: a fresh interpreter in a mount namespace; `make test` has the in-process cases below
def test_every_command_on_a_read_only_workspace_ends_in_one_line(ws, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("private mount namespaces are not allowed here")
    pytest.importorskip("captum")
    cases = commands(ws)
    script = tmp_path / "run_all.py"
    script.write_text(RUN_ALL)
    inner = (f"mount --bind {ws} {ws} && mount -o remount,bind,ro {ws} && "
             f"exec {sys.executable} {script} \"$0\"")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HOME": str(tmp_path)}
    done = subprocess.run(["unshare", "-m", "sh", "-c", inner, json.dumps([a for a, _ in cases])], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    bad = []
    for (args, want), r in zip(cases, results):
        errors = [ln for ln in r["err"].splitlines() if ": error: " in ln]
        ok = r["rc"] == want and "Traceback" not in r["err"]
        if want:
            ok = ok and len(errors) == 1 and str(ws) in errors[0]
        if not ok:
            bad.append(f"{' '.join(args[:2])}: rc {r['rc']} (want {want}): {r['err'][-600:]}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_runs_root_nobody_may_write_is_one_line_exit_1(command, ws, capsys):
    """/sys refuses new entries even to root (EPERM): a place the command line chose that the system will not
    take, an outside cause. The subprocess test above does every command on a read-only mount."""
    place = Path("/sys/dogcat-test-runs")
    if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) is False:
        pytest.skip("no /sys")
    tiny = argv(tiny_options(ws / "data", place))
    args = {"train": ["train", *tiny], "sweep": ["sweep", str(ws / "space.yaml"), f"--runs-root={place}"]}[command]
    assert main(args) == 1
    line = one_error(capsys.readouterr().err)
    assert str(place) in line and "Traceback" not in line
    assert not place.exists()


@pytest.mark.parametrize("case", [
    "test --result-file=FOLDER", "test --result-file=FILE/x.csv", "predict --output=FOLDER",
    "predict --output=FILE/x.csv", "export --output=FOLDER", "export --output=FILE/m.safetensors",
    "explain --output=FILE", "lr-find --output=FILE/plot.png", "sweep --runs-root=FILE", "lr-find --runs-root=FILE"])
def test_an_output_option_that_cannot_be_that_place_is_one_line(case, ws, tmp_path, capsys):
    run, test = ws / "runs" / "r", ws / "data" / "test"
    (tmp_path / "FOLDER").mkdir()
    (tmp_path / "FILE").write_text("a regular file\n")
    command, option = case.split(" ")
    key, _, value = option.partition("=")
    value = str(tmp_path / value)
    tiny = argv(tiny_options(ws / "data", tmp_path / "runs"))
    args = {"test": ["test", str(run), f"--test-data-root={test}"],
            "predict": ["predict", str(run), str(test)],
            "export": ["export", str(run), "--format=safetensors"],
            "explain": ["explain", str(run), str(test / "1.jpg")],
            "lr-find": ["lr-find", *tiny, "--steps=3"],
            "sweep": ["sweep", str(ws / "space.yaml")],
            }[command]
    if command == "explain":
        pytest.importorskip("captum")
    before = sorted(os.listdir(tmp_path))
    assert main([*args, f"{key}={value}"]) == 2
    line = one_error(capsys.readouterr().err)
    assert key in line and (value[:80] in line or str(tmp_path / "FILE") in line), line
    assert sorted(os.listdir(tmp_path)) == before  # nothing was made, not even the runs folder
    assert (tmp_path / "FILE").read_text() == "a regular file\n" and not any((tmp_path / "FOLDER").iterdir())


# ---- low items: a manifest of valid JSON but wrong types; lr-find's full disk names its folder --------------

@pytest.mark.parametrize("fields", [{"start_unix": "x"}, {"previous_sessions": 5}, {"git": {"commit": 7}},
                                    {"previous_sessions": [{"duration_s": "long"}]}])  # the fuzz test tries more
def test_a_manifest_of_the_wrong_types_is_one_line_and_a_resume_starts_a_new_one(fields, ws, tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    shutil.copytree(ws / "runs" / "r", run)
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, **fields}))
    for args in (["runs", "show", str(run)], ["report", str(run)]):
        assert main(args) == 2
        line = one_error(capsys.readouterr().err)
        assert "manifest.json" in line and next(iter(fields)) in line
    assert main(["runs", str(run.parent)]) == 0  # the table skips it with a warning, as any damaged run
    assert "skipping run" in capsys.readouterr().err
    assert main(["train", f"--resume={run}", "--max-epoch=1"]) == 0  # a record, not an input: a new one
    assert "writing a new one" in capsys.readouterr().err
    assert json.loads((run / "manifest.json").read_text())["previous_sessions"] == []


@pytest.mark.slow  # a fresh interpreter in a mount namespace
def test_lr_find_on_a_full_disk_names_its_output_folder(ws, tmp_path):
    """A real full disk: a 24 KiB tmpfs in a private mount namespace, half filled; the plot does not fit."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("private mount namespaces are not allowed here")
    full = tmp_path / "full"
    full.mkdir()
    tiny = argv(tiny_options(ws / "data", full))
    inner = (f"mount -t tmpfs -o size=24k tmpfs {full} && head -c 12288 /dev/zero > {full}/pad && "
             f"exec {sys.executable} -m dogcat lr-find \"$@\"")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(["unshare", "-m", "sh", "-c", inner, "sh", *tiny, "--steps=3"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    line = one_error(done.stderr)
    assert "disk full" in line and f"in {full}/lr-find-" in line, line
