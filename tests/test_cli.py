"""The command line as people type it: both option forms, switches, unknown options and extra arguments,
each command's own help, streams (results on stdout, the rest on stderr), JSON, start-up without torch,
completion scripts, and the library used from a fresh interpreter."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dogcat
from dogcat.cli import COMMANDS, main
from dogcat.cli.args import parse
from dogcat.config import load_config


# --- the argument table: (command, arguments) -> what the command receives ------------------------------
PARSED = [
    ("train", ["--lr", "0.01"], {"lr": 0.01}),
    ("train", ["--lr=0.01"], {"lr": 0.01}),
    ("train", ["--optim.lr", "0.01"], {"lr": 0.01}),
    ("train", ["--LR=0.01", "--Batch_Size", "8"], {"lr": 0.01, "batch_size": 8}),
    ("train", ["--lr", "2e-3"], {"lr": 2e-3}),
    ("train", ["--cache"], {"cache": True}),
    ("train", ["--no-cache"], {"cache": False}),
    ("train", ["--cache=false"], {"cache": False}),
    ("train", ["--use_gpu=no", "--channels-last=yes"], {"use_gpu": False, "channels_last": True}),
    ("train", ["--milestones", "3,6"], {"milestones": [3, 6]}),
    ("train", ["--pretrained", "none", "--env", "2024"], {"pretrained": None, "env": "2024"}),
    ("test", ["RUN", "--result-file", "sub.csv", "--tta"], {"result_file": "sub.csv", "tta": True}),
    ("predict", ["RUN", "a.jpg", "--output", "out.csv"], {"output": "out.csv"}),
    ("predict", ["RUN", "--tta", "a.jpg", "b.jpg"], {"tta": True}),
    ("predict", ["RUN", "a.jpg", "--batch-size", "2", "b.jpg"], {"batch_size": 2}),
    ("runs", ["--runs-root", "x"], {"runs_root": "x"}),
]


@pytest.mark.parametrize("command, argv, expected", PARSED, ids=[" ".join([c, *a]) for c, a, _ in PARSED])
def test_argument_forms(command, argv, expected):
    ns, overrides = parse(COMMANDS[command], argv)
    cfg = load_config(overrides)
    for key, value in expected.items():
        section = next(s for s in ("data", "model", "optim", "train", "eval") if hasattr(getattr(cfg, s), key))
        assert getattr(getattr(cfg, section), key) == value, (key, overrides)
    if command == "predict":
        assert ns.target == "RUN" and ns.paths == [a for a in argv if a.endswith(".jpg")]


def test_own_options_in_both_forms():
    ns, _ = parse(COMMANDS["export"], ["RUN", "--format", "torchscript", "--output", "m.pt"])
    assert (ns.target, ns.format, ns.output) == ("RUN", "torchscript", "m.pt")
    ns, _ = parse(COMMANDS["ctl"], ["RUN", "set", "lr=0.1", "--timeout", "5"])
    assert (ns.run, ns.words, ns.timeout) == ("RUN", ["set", "lr=0.1"], 5.0)
    ns, _ = parse(COMMANDS["lr-find"], ["--steps=30", "--start-lr", "1e-5"])
    assert (ns.steps, ns.start_lr) == (30, 1e-5)
    ns, _ = parse(COMMANDS["runs"], ["show", "RUN", "--json"])
    assert ns.words == ["show", "RUN"] and ns.json
    ns, ov = parse(COMMANDS["explain"], ["RUN", "a.jpg", "--target", "dog", "--layer=layer4", "b.jpg", "--output", "o"])
    assert (ns.run, ns.paths, ns.target, ns.layer, ns.output, ov) == ("RUN", ["a.jpg", "b.jpg"], "dog", "layer4", "o", {})
    ns, ov = parse(COMMANDS["summary"], ["--model", "resnet18", "--in-chans=1", "--num-classes", "10", "--depth=2"])
    assert (ns.in_chans, ns.num_classes, ns.depth, ov) == (1, 10, 2, {"model": "resnet18"})


REFUSED = [  # (command line, words the one-line message must hold)
    (["train", "--lrr=0.1"], ["--lrr", "did you mean --lr"]),
    (["train", "--lrr", "0.1"], ["--lrr", "--lr"]),
    (["train", "--no-lr"], ["--no-lr"]),
    (["train", "--cache=maybe"], ["--cache", "'maybe'"]),
    (["train", "--cache", "extra"], ["unexpected argument", "'extra'"]),
    (["train", "--lr"], ["--lr", "needs a value"]),
    (["train", "--lr", "-1e-3"], ["--lr=-0.001", "out of range"]),  # after a space, a negative number is the value
    (["train", "--max-epoch", "ten"], ["--max-epoch", "int", "'ten'"]),
    (["predict", "RUN", "a.jpg", "--lr=1"], ["--lr", "does not read"]),
    (["predict", "RUN"], ["paths"]),
    (["runs", "--output=json"], ["--output"]),
    (["val", "RUN", "extra"], ["unexpected argument", "'extra'"]),
    (["models", "extra"], ["'extra'"]),
    (["inspect"], ["target"]),
    (["lr-find", "--steps", "x"], ["--steps", "'x'"]),
    (["completion", "fish"], ["fish", "bash or zsh"]),
    (["explain", "RUN"], ["paths"]),
    (["explain", "RUN", "a.jpg", "--max-epoch=1"], ["--max-epoch", "does not read"]),
    (["summary", "--num-classes", "two"], ["--num-classes", "'two'"]),
    (["summary", "extra"], ["unexpected argument", "'extra'"]),
    (["trian"], ["did you mean train"]),
]


@pytest.mark.parametrize("argv, words", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_arguments_exit_2_with_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not any(tmp_path.iterdir())  # nothing made before the arguments were accepted


def test_version_and_each_commands_own_help(capsys):
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out.strip() == f"dogcat {dogcat.__version__}"
    helps = {}
    for name in COMMANDS:
        assert main([name, "--help"]) == 0
        helps[name] = capsys.readouterr().out
        assert helps[name].startswith(f"usage: dogcat {name}")
    assert "--lr " in helps["train"] and "--lr " not in helps["predict"] and "--output" in helps["predict"]
    assert "--json" in helps["runs"] and "--max-epoch" not in helps["runs"]
    assert len(helps["predict"].splitlines()) < 80  # the few options it reads (--top-k too), not all of train's
    assert main(["help", "predict"]) == 0 and capsys.readouterr().out == helps["predict"]


def test_import_loads_no_torch():
    """What keeps `dogcat --version`, `help`, `runs` and `completion` fast (their timings: docs/options.md)."""
    code = "import sys; import dogcat, dogcat.cli; print(int('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0", "import dogcat / dogcat.cli imported torch"
    code = ("import sys; from dogcat.cli import main; main(['runs', '--json', '.']); main(['help']); "
            "main(['completion', 'bash']); print(int('torch' in sys.modules), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stderr.strip().splitlines()[-1] == "0", "runs / help / completion imported torch"


def test_bash_completion_completes_commands_options_and_choices(tmp_path):
    script = tmp_path / "dogcat.bash"
    script.write_text(subprocess.run([sys.executable, "-m", "dogcat", "completion", "bash"], capture_output=True,
                                     text=True, check=True).stdout)

    def complete(*words: str) -> set[str]:
        arr = " ".join(f"'{w}'" for w in words)
        cmd = f"source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _dogcat; echo ${{COMPREPLY[@]}}"
        return set(subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split())

    assert complete("dogcat", "tr") == {"train"}
    assert {"--lr", "--lr-decay", "--lr-scaling"} <= complete("dogcat", "train", "--lr")
    assert "--lr" not in complete("dogcat", "predict", "--l")
    assert complete("dogcat", "train", "--precision", "=", "b") == {"bf16"}
    assert complete("dogcat", "export", "R", "--format", "o") == {"onnx"}


def test_zsh_completion_is_valid_zsh(tmp_path):
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (`make test` installs Debian's zsh when apt is usable)")
    text = subprocess.run([sys.executable, "-m", "dogcat", "completion", "zsh"], capture_output=True, text=True,
                          check=True).stdout
    assert text.startswith("#compdef dogcat")
    r = subprocess.run([zsh, "-n"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # loaded for real: compinit, then the function is defined and bound to the command
    script = tmp_path / "dogcat.zsh"
    script.write_text(text)
    r = subprocess.run([zsh, "-f", "-c", f"autoload -U compinit; compinit -u -d {tmp_path}/zcompdump; "
                                         f"source {script}; print -r -- ${{_comps[dogcat]}}"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "_dogcat", r.stderr


# --- a real run, and the commands on it ----------------------------------------------------------------------

@pytest.fixture
def run(tiny_run):
    """(data root, run folder) of the session's tiny run: read only (see conftest.tiny_run)."""
    return tiny_run.data, tiny_run.run


def test_predict_and_test_write_the_named_files(run, tmp_path, capsys):
    root, run_dir = run
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), str(root / "test" / "1.jpg"), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["path"] for r in rows] == [str(root / "test" / "1.jpg")]
    assert not Path("True").exists()
    sub = tmp_path / "sub.csv"
    assert main(["test", str(run_dir), "--result-file", str(sub)]) == 0
    assert sub.read_text().splitlines()[0] == "id,label" and len(sub.read_text().splitlines()) == 5
    assert "submission" in capsys.readouterr().out


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_stdout_holds_results_only(run, tmp_path):
    """``predict --output=-`` is CSV on stdout with nothing else in it; the logs went to stderr."""
    root, run_dir = run
    r = subprocess.run([sys.executable, "-m", "dogcat", "predict", str(run_dir), str(root / "test"), "--output=-"],
                       capture_output=True, text=True, check=True)
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][:3] == ["path", "class", "probability"] and len(rows) == 5
    assert all(Path(row[0]).is_file() and float(row[2]) > 0 for row in rows[1:])
    assert "loaded" in r.stderr  # the weights' load report: a log, on stderr
    q = subprocess.run([sys.executable, "-m", "dogcat", "predict", "-q", str(run_dir), str(root / "test")],
                       capture_output=True, text=True, check=True)
    assert q.stderr == "" and "probability" in q.stdout


def test_json_outputs_parse(tiny_run, tmp_path, capsys):
    run_dir = tiny_run.copy(tmp_path)  # val and test write their results into the run folder
    assert main(["val", str(run_dir), "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    logged = next(r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if r.get("kind") == "epoch" and r["epoch"] == val["epoch"])  # the checkpoint's own epoch
    assert val["accuracy"] == pytest.approx(logged["val_accuracy"], abs=1e-9)
    assert val["count"] == 4 and val["class_names"] == ["cat", "dog"]
    assert main(["test", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 4
    assert main(["runs", str(run_dir.parent), "--json"]) == 0
    (one,) = json.loads(capsys.readouterr().out)
    assert one["name"] == "r" and one["status"] == "finished" and one["options"]["lr"] == 0.01
    assert main(["runs", "show", "r", "--runs-root", str(run_dir.parent), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["manifest"]["status"] == "finished" and "val_accuracy" in shown["final_metrics"]
    assert main(["runs", "diff", str(run_dir), str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == {}


@pytest.mark.slow  # `make test-all`; `make test` keeps under 3 minutes on two cores
def test_library_in_a_fresh_interpreter_shows_epoch_metrics(tmp_path):
    """No logging set up, as in a notebook: dogcat's default handler shows the epoch summaries."""
    from datagen import make_fmnist_idx

    data = make_fmnist_idx(tmp_path / "fm", n_train=64, n_test=16)
    code = ("import dogcat; r = dogcat.train(dataset='fashion-mnist', fashion_mnist_root=%r, model='smallcnn', "
            "image_size=28, max_epoch=2, batch_size=16, num_workers=0, progress='none', runs_root=%r, "
            "debug_file=None); print('best', r.best_metric)") % (str(data), str(tmp_path / "runs"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 1/2: train loss" in r.stderr and "epoch 2/2: train loss" in r.stderr and "val accuracy" in r.stderr
    assert r.stdout.startswith("best ")


def test_library_functions_take_keyword_options(tiny_run, tmp_path):
    root, run_dir = tiny_run.data, tiny_run.copy(tmp_path)  # evaluate writes RUN/result.json
    assert dogcat.evaluate(run_dir, tta=True)["count"] == 4
    rows = dogcat.predict(run_dir, str(root / "test" / "2.jpg"), tta=True)
    assert len(rows) == 1 and rows[0]["class"] in ("cat", "dog")
