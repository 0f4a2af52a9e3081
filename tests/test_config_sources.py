"""Where option values come from, as LightningCLI and Hydra users expect: several ``--config`` files merged in
order (``-c`` for short), ``DOGCAT_*`` environment variables between them and the command line, and
``--print-config`` showing the result (docs/options.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dogcat
from dogcat.cli import COMMANDS, main
from dogcat.cli.args import parse
from dogcat.config import OPTIONS, flat_config, load_config

ROOT = Path(__file__).parents[1]


def printed(capsys, *argv: str) -> dict:
    """The flat options of ``dogcat ARGV --print-config`` (which must exit 0)."""
    assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
    return flat_config(yaml.safe_load(capsys.readouterr().out))


@pytest.fixture
def recipes(tmp_path: Path) -> tuple[Path, Path]:
    """a.yaml (flat: lr, batch_size, a local option) and b.yaml (nested: lr, max_epoch)."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("lr: 0.5\nbatch_size: 8\nruns_root: /elsewhere\n")
    b.write_text("optim:\n  lr: 0.02\ntrain:\n  max_epoch: 3\n  run_dir: /elsewhere/run\n")
    return a, b


# --- several --config files, -c ---------------------------------------------------------------------------------

def test_several_configs_merge_in_order_and_the_command_line_wins(recipes, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = recipes
    # a local option in either file is ignored, with a warning naming the file, as with one recipe (first: Python
    # shows a warning once per place in one process)
    assert main(["train", "--config", str(a), "--config", str(b), "--print-config"]) == 0
    out, err = capsys.readouterr()
    got = flat_config(yaml.safe_load(out))
    assert (got["runs_root"], got["run_dir"]) == ("runs", None)
    assert f"{a}: --runs-root='/elsewhere' ignored" in err and f"{b}: --run-dir='/elsewhere/run' ignored" in err
    assert (got["lr"], got["batch_size"], got["max_epoch"]) == (0.02, 8, 3)  # a's batch_size survives b
    got = printed(capsys, "train", "--config", str(b), "--config", str(a))
    assert (got["lr"], got["batch_size"], got["max_epoch"]) == (0.5, 8, 3)  # the later file wins
    got = printed(capsys, "train", f"--config={a}", f"--config={b}", "--lr=0.1", "--max-epoch", "4")
    assert (got["lr"], got["batch_size"], got["max_epoch"]) == (0.1, 8, 4)
    # a built-in recipe by name, then a file on top of it
    got = printed(capsys, "train", "-c", "fashion-mnist", "-c", str(b))
    assert (got["dataset"], got["lr"]) == ("fashion-mnist", 0.02)
    # the library takes a list too
    assert load_config({"lr": 0.3}, [a, b]).train.max_epoch == 3 and dogcat.config.as_config([b, a]).optim.lr == 0.5


def test_short_c_in_each_spelling_and_where_config_is_read(recipes, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = recipes
    for argv in (["-c", str(a), "-c", str(b)], [f"-c{a}", f"-c={b}"], ["-c", str(a), f"--config={b}"]):
        ns, _ = parse(COMMANDS["train"], argv)
        assert ns.config == [str(a), str(b)], argv
    for cmd in ("lr-find", "demo"):
        ns, _ = parse(COMMANDS[cmd], ["-c", str(a), "--config", str(b)])
        assert ns.config == [str(a), str(b)], cmd
    assert main(["train", "-c"]) == 2
    assert "option -c needs a value" in capsys.readouterr().err
    assert main(["predict", "RUN", "x.jpg", "-c", str(a)]) == 2  # predict takes no recipe
    capsys.readouterr()
    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "-c CONFIG, --config CONFIG" in help_text and "DOGCAT_LR=0.01" in help_text
    assert not any(p.name not in ("a.yaml", "b.yaml") for p in tmp_path.iterdir())


def test_demo_and_lr_find_print_their_config(recipes, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = recipes
    got = printed(capsys, "demo", "-c", str(b), "--batch-size=64")
    assert (got["dataset"], got["env"], got["lr"], got["batch_size"], got["max_epoch"]) == \
        ("fashion-mnist", "demo-fashion-mnist", 0.02, 64, 3)
    got = printed(capsys, "lr-find", "-c", str(a), "-c", str(b))
    assert (got["lr"], got["batch_size"]) == (0.02, 8)
    assert not any(p.name not in ("a.yaml", "b.yaml") for p in tmp_path.iterdir())


def test_sweep_prints_the_config_every_trial_starts_from(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "sweep-fashion-mnist", "--max-epoch=2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# every trial of sweep-fashion-mnist starts from this config; drawn per trial:\n#   ")
    assert re.search(r"^#   lr: loguniform ", out, re.M)
    (tmp_path / "base.yaml").write_text(out)
    assert flat_config(yaml.safe_load(out))["max_epoch"] == 2
    assert load_config(config_file=tmp_path / "base.yaml").train.max_epoch == 2
    assert [p.name for p in tmp_path.iterdir()] == ["base.yaml"]


# --- --print-config ---------------------------------------------------------------------------------------------

def test_print_config_round_trips_and_makes_nothing(recipes, capsys, tmp_path, monkeypatch):
    """The printed YAML is what the run's config.yaml would hold: read back with --config it gives the same config.
    Its places (local options: --runs-root ...) are not taken from it, as from any file: they come from the
    command line (or the environment) again."""
    monkeypatch.chdir(tmp_path)
    a, b = recipes
    argv = ["train", "-c", "fashion-mnist", "-c", str(a), "--lr=0.07", "--runs-root=mine", "--milestones=3,6",
            "--pretrained=none", "--cache"]
    assert main([*argv, "--print-config"]) == 0
    first = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(first)
    assert main(["train", "-c", str(tmp_path / "resolved.yaml"), "--runs-root=mine", "--print-config"]) == 0
    assert capsys.readouterr().out == first
    ns, ov = parse(COMMANDS["train"], argv[1:])
    expected = load_config(ov, ns.config)
    assert load_config({"runs_root": "mine"}, config_file=tmp_path / "resolved.yaml") == expected
    assert load_config(config_file=tmp_path / "resolved.yaml").train.runs_root == "runs"
    assert expected.train.runs_root == "mine" and expected.optim.milestones == [3, 6] and expected.data.cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml", "resolved.yaml"]  # no runs/, no data


def test_print_config_of_a_resume_is_the_runs_own_config(tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dogcat.config.to_yaml(load_config({"lr": 0.25, "batch_size": 6})))
    monkeypatch.chdir(tmp_path)
    got = printed(capsys, "train", "--resume=r", "--max-epoch=7")
    assert (got["lr"], got["batch_size"], got["max_epoch"], got["resume"]) == (0.25, 6, 7, "r")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


# --- DOGCAT_* environment variables -----------------------------------------------------------------------------

def test_environment_sits_between_the_recipes_and_the_command_line(recipes, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, _ = recipes
    monkeypatch.setenv("DOGCAT_LR", "0.03")
    monkeypatch.setenv("DOGCAT_OPTIM__WEIGHT_DECAY", "0.2")  # section__name, as --optim.weight-decay
    monkeypatch.setenv("DOGCAT_cache", "yes")
    monkeypatch.setenv("DOGCAT_MILESTONES", "30,60")
    monkeypatch.setenv("DOGCAT_PRETRAINED", "")  # empty: unset
    got = printed(capsys, "train", "-c", str(a))
    assert (got["lr"], got["batch_size"], got["weight_decay"], got["cache"], got["milestones"]) == \
        (0.03, 8, 0.2, True, [30, 60])
    got = printed(capsys, "train", "-c", str(a), "--lr=0.1", "--no-cache")
    assert (got["lr"], got["cache"]) == (0.1, False)
    # library calls read no variables: a script gets exactly the options it passes
    assert load_config().optim.lr == 1e-3 and dogcat.config.as_config({"batch_size": 3}).optim.lr == 1e-3
    # the user's shell is trusted like the command line: it may name the places dogcat writes to
    monkeypatch.setenv("DOGCAT_RUNS_ROOT", str(tmp_path / "scratch"))
    assert printed(capsys, "train", "-c", str(a))["runs_root"] == str(tmp_path / "scratch")
    # a command that does not read an option ignores its variable: `runs` reads only --runs-root
    (tmp_path / "scratch").mkdir()
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["sweep", "show", "nothing"]) == 2  # not refused for DOGCAT_LR: looked for under DOGCAT_RUNS_ROOT
    assert f"{tmp_path / 'scratch'}/nothing" in capsys.readouterr().err


@pytest.mark.parametrize("name, value, words", [
    ("DOGCAT_LR", "fast", ["DOGCAT_LR='fast'", "--lr", "expects float"]),
    ("DOGCAT_LR", "nan", ["DOGCAT_LR='nan'", "out of range", "finite number in [0, inf)"]),
    ("DOGCAT_BATCH_SIZE", "0", ["DOGCAT_BATCH_SIZE='0'", "integer in [1, "]),
    ("DOGCAT_SCHEDULER", "sometimes", ["DOGCAT_SCHEDULER='sometimes'", "not one of: loss-rise"]),
    ("DOGCAT_CACHE", "maybe", ["DOGCAT_CACHE='maybe'", "--cache is a switch", "true, false"]),
    ("DOGCAT_NAME", "../x", ["DOGCAT_NAME='../x'", "not a plain run name"]),
])
def test_a_bad_value_is_one_line_naming_the_variable(name, value, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    assert main(["train", "--max-epoch=1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"dogcat train: error: environment variable {name}=")
    for w in words:
        assert w in err, (w, err)
    assert not any(tmp_path.iterdir())


def test_an_unknown_variable_is_one_warning_not_an_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOGCAT_LRR", "0.1")
    monkeypatch.setenv("DOGCAT_SRC", "/somewhere/src")  # dogcat's own (tests/test_layers.py): no option, no warning
    monkeypatch.setenv("DOGCAT_FUZZ_EXAMPLES", "10")
    assert main(["train", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert flat_config(yaml.safe_load(out))["lr"] == 1e-3
    assert err.count("warning:") == 1, err
    assert "environment variable DOGCAT_LRR is not a dogcat option; did you mean DOGCAT_LR?" in err
    monkeypatch.setenv("DOGCAT_NAME", "a")
    monkeypatch.setenv("DOGCAT_ENV", "b")  # two spellings of one option: which won would be an accident
    assert main(["train", "--print-config"]) == 2
    assert "DOGCAT_ENV and DOGCAT_NAME both set --name" in capsys.readouterr().err


def test_only_dogcats_own_variables_are_not_options():
    """Each DOGCAT_ variable the code or the tests read is listed in NOT_OPTIONS (so it is not taken for a typo),
    and none of those names an option."""
    from dogcat.config.environ import NOT_OPTIONS, PREFIX, variable

    read = set()
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("tests").glob("*.py"), *ROOT.joinpath("bench").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        read |= set(re.findall(r"""(?:environ\.get|getenv|environ\[)\(?\s*["'](DOGCAT_\w+)""", text))
    assert read == set(NOT_OPTIONS)
    spelled = {variable(leaf) for leaf in OPTIONS}
    assert not spelled & NOT_OPTIONS and all(v.startswith(PREFIX) for v in spelled)
    assert variable("env") == "DOGCAT_NAME" and variable("batch_size") == "DOGCAT_BATCH_SIZE"


def test_variables_go_through_the_resume_check(tmp_path, tiny, capsys, monkeypatch):
    """A resumed run reads its own config.yaml; a variable acts as the same option on the command line would: one
    that may not change on resume is refused, naming the variable; one that may is applied and recorded."""
    from datagen import make_folder

    data = make_folder(tmp_path / "data", n_per_class=4)
    result = dogcat.train(**tiny(data, tmp_path / "runs", env="r"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOGCAT_BATCH_SIZE", "8")
    capsys.readouterr()
    assert main(["train", f"--resume={result.run_dir}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot change on resume: --batch-size (4 -> 8)" in err and "(set in the environment: DOGCAT_BATCH_SIZE='8')" in err
    monkeypatch.delenv("DOGCAT_BATCH_SIZE")
    monkeypatch.setenv("DOGCAT_MAX_EPOCH", "2")
    assert main(["train", f"--resume={result.run_dir}", "-q"]) == 0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    resume = next(r for r in records if r.get("event") == "resume")
    assert resume["changed"]["max_epoch"] == [1, 2]
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["max_epoch"] == 2


def test_each_rank_under_torchrun_would_warn_so_only_rank_0_does(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOGCAT_LRR", "1")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--print-config"]) == 0
    assert "DOGCAT_LRR" not in capsys.readouterr().err


# --- completion knows the new spellings -------------------------------------------------------------------------

def test_completion_knows_c_print_config_dry_run_and_recipe_names(tmp_path):
    script = tmp_path / "dogcat.bash"
    script.write_text(subprocess.run([sys.executable, "-m", "dogcat", "completion", "bash"], capture_output=True,
                                     text=True, check=True).stdout)
    (tmp_path / "mine.yaml").write_text("lr: 0.1\n")

    def complete(*words: str) -> set[str]:
        arr = " ".join(f"'{w}'" for w in words)
        cmd = (f"cd {tmp_path}; source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _dogcat; "
               "echo ${COMPREPLY[@]}")
        return set(subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split())

    assert {"-c", "--config", "--print-config", "--dry-run", "--fast-dev-run"} <= complete("dogcat", "train", "-")
    assert {"-c", "--print-config"} <= complete("dogcat", "lr-find", "-")
    assert "--dry-run" not in complete("dogcat", "lr-find", "-") and "-c" not in complete("dogcat", "val", "-")
    assert complete("dogcat", "train", "-c", "fash") == {"fashion-mnist", "fashion-mnist-94"}
    assert complete("dogcat", "train", "--config", "=", "mi") == {"mine.yaml"}
    assert "dogs-vs-cats" in complete("dogcat", "train", "-c", "")


def test_the_nproc_relaunch_passes_every_config_in_order(recipes, tmp_path, monkeypatch):
    """`--nproc=N` relaunches the command under torchrun: each process must resolve the same config."""
    import dogcat.engine.distributed as distributed

    monkeypatch.chdir(tmp_path)
    a, b = recipes
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda n, args: launched.append((n, args)) or 0)
    monkeypatch.setenv("DOGCAT_BATCH_SIZE", "6")
    assert main(["train", "-c", str(a), "-c", str(b), "--nproc=2", "--max-epoch=5"]) == 0
    (n, args), = launched
    assert n == 2 and args[:2] == [f"--config={a}", f"--config={b}"]
    ns, ov = parse(COMMANDS["train"], args)
    cfg = load_config(ov, ns.config)
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.train.max_epoch) == (0.02, 6, 5)


def test_a_whole_config_from_elsewhere_sets_no_places_but_a_resume_keeps_its_own(tmp_path):
    """Only the caller decides that a file is a run's own config.yaml (a resume): a stranger's file naming every
    option (a copied config.yaml) is a recipe like any other, its places ignored with a warning."""
    from dogcat.config import to_yaml

    whole = to_yaml(load_config({"runs_root": str(tmp_path / "elsewhere"), "cache_dir": "/tmp/theirs", "lr": 0.5}))
    path = tmp_path / "config.yaml"
    path.write_text(whole)
    with pytest.warns(UserWarning, match="--runs-root=.* ignored"):
        cfg = load_config(config_file=path)
    assert cfg.optim.lr == 0.5 and cfg.train.runs_root == "runs" and cfg.data.cache_dir != "/tmp/theirs"
    own = load_config(config_file=path, run_config=True)
    assert own.train.runs_root == str(tmp_path / "elsewhere") and own.data.cache_dir == "/tmp/theirs"
