"""The ``dogcat`` commands (those on a trained model are in ``use.py``): each takes its parsed arguments, calls
library functions and prints the results.

Results go to stdout (tables, CSV, JSON), everything else (logs, progress, warnings) to stderr. Library
modules are imported inside the commands that need them, so that ``dogcat runs`` or ``dogcat --version``
never load torch.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..config import COUNT, Config, ConfigError, load_config, to_yaml
from ..console import printable
from ..metrics import format_confusion, format_per_label, summary as metrics_line
from .output import print_json


def train_recipes(a: argparse.Namespace, ov: dict[str, Any]) -> list[str | Path]:
    """The recipes a training starts from: each ``--config`` in order; a resume without ``--config`` starts from
    the run's own config.yaml (as ``dogcat.train(resume=RUN)`` does)."""
    if a.config or not ov.get("resume"):
        return list(a.config or [])
    from ..tracking.folder import RunFolder, find_run

    return [RunFolder(find_run(str(ov["resume"]), str(ov.get("runs_root", "runs")))).config]


def print_config(cfg: Config, header: str = "") -> int:
    """``--print-config``: the resolved config as the run's config.yaml would hold it, on stdout."""
    sys.stdout.write(header + to_yaml(cfg))
    return 0


def train(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from .args import to_argv

    if a.dry_run is not None and not a.print_config:  # a dry run never resumes (it says so): the recipes alone
        return dry_run(load_config(ov, a.config), a.dry_run)
    configs, own = train_recipes(a, ov), not a.config and bool(ov.get("resume"))
    if a.print_config:
        return print_config(load_config(ov, configs, run_config=own))
    from ..engine.distributed import launch
    from ..engine.trainer import train as run_training

    raw = str(ov.get("nproc", 1)).strip()
    nproc = int(raw) if re.fullmatch(r"[+-]?\d+", raw) else 1  # not a number: load_config names it below
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # the shortcut: relaunch under torchrun
        load_config(ov, configs, run_config=own)  # a bad option fails here, once, not in every process
        rest = {k: v for k, v in ov.items() if k != "nproc"}
        return launch(nproc, [f"--config={c}" for c in a.config or []] + to_argv(rest))
    result = run_training(None if own else configs or None, **ov)  # a resume finds its own config.yaml
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one result line, from rank 0
        print(f"run folder: {result.run_dir}")
    return 0


def dry_run(cfg: Config, batches: int) -> int:
    """``train --dry-run[=N]``: N batches of training and of validation, nothing kept (engine/dry_run.py)."""
    from ..engine.dry_run import dry_run as run_dry

    if not 1 <= batches <= COUNT:
        raise ConfigError(f"option --dry-run={batches} is out of range: allowed is a number of batches in [1, {COUNT}]")
    print(run_dry(cfg, batches).text())
    return 0


def _metrics_text(m: dict[str, Any], what: str, class_names: list[str]) -> str:
    table = format_per_label(m["per_label"]) if "per_label" in m else format_confusion(m["confusion"], class_names)
    text = f"{what}: {metrics_line(m)} on {m['count']} images\n{table}"
    return printable(text)  # a class named by a non-UTF-8 folder: shown as \xNN in a table


def val(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..engine.evaluator import evaluate

    result = evaluate(a.target, ov)
    if a.json:
        print_json(result)
    else:
        print(_metrics_text(result, "val", result["class_names"]))
    return 0


def test(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..engine.evaluator import test as run_test

    result = run_test(a.target, ov)
    if a.json:
        print_json(result)
    else:
        print(f"submission: {result['submission']} ({result['rows']} rows)")
        if "metrics" in result:
            print(_metrics_text(result["metrics"], "test", result["class_names"]))
    return 0


def calibrate(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat calibrate RUN``: the fitted temperature and NLL / ECE before -> after on the validation split."""
    from ..engine.calibrate import calibrate as run_calibrate

    r = run_calibrate(a.target, ov)
    if a.json:
        print_json(vars(r))
        return 0
    print(f"temperature {r.temperature:.4f} (was {r.previous_temperature:.4g}), fitted on {r.images} validation images")
    print(f"NLL {r.nll_before:.4f} -> {r.nll_after:.4f}, ECE ({r.ece_bins} bins) {r.ece_before:.4f} -> "
          f"{r.ece_after:.4f}")
    print(printable(f"stored in {r.checkpoint}; val, test, predict, report and export apply it "
                    "(--no-calibration: the raw softmax)"))
    return 0


def lr_find(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..engine.lr_find import lr_find as run_lr_find

    cfg = load_config(ov, a.config)
    if a.print_config:
        return print_config(cfg)
    res = run_lr_find(cfg, a.output, a.start_lr, a.end_lr, a.steps)
    if res.suggestion is None:
        print("too few steps before the loss diverged to suggest a learning rate", file=sys.stderr)
        return 1
    print(f"lr range test: {len(res.lrs)} steps, lr {res.lrs[0]:.2g} .. {res.lrs[-1]:.2g}; plot {res.plot}")
    print(f"suggested lr: {res.suggestion:.3g} (steepest descent; lowest loss at {res.min_loss_lr:.3g}, "
          f"/10 = {res.min_loss_lr / 10:.3g})")
    return 0


def ctl(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat ctl RUN COMMAND [ARG]`` — talk to a running training (see docs/steering.md)."""
    from ..control import NotRunning, send
    from ..io import MalformedFile
    from ..tracking.folder import RunFolder

    run = RunFolder(a.run)
    if not run.is_run():
        raise ConfigError(f"no run folder at {run.path} (it has no {run.config.name})")
    try:
        result = send(run.control, " ".join(a.words), a.timeout, str(run.path), starting=run.starting)
    except NotRunning as e:
        try:
            status = run.status()
        except MalformedFile:
            status = "unreadable"
        raise NotRunning(f"{e} (status: {status})") from None
    print(f"{'ok' if result['ok'] else 'refused'} at step {result.get('step')}: {result['message']}")
    return 0 if result["ok"] else 2


RUNS_USAGE = "dogcat runs [FOLDER] | dogcat runs show RUN | dogcat runs diff RUN_A RUN_B"


def runs(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..tracking import listing as table
    from ..tracking.folder import find_run

    root, words = str(ov.get("runs_root", "runs")), a.words
    if words[:1] == ["show"] and len(words) == 2:
        path = find_run(words[1], root)
        print_json(table.show_data(path)) if a.json else print(printable(table.show(path)))
    elif words[:1] == ["diff"] and len(words) == 3:
        pa, pb = find_run(words[1], root), find_run(words[2], root)
        print_json(table.diff_data(pa, pb)) if a.json else print(printable(table.diff(pa, pb)))
    elif len(words) <= 1 and words[:1] not in (["show"], ["diff"]):
        folder = Path(words[0] if words else root)
        if not folder.is_dir():
            raise ConfigError(f"no folder {folder} ({RUNS_USAGE}; default folder: runs)")
        found = table.find_runs(folder)
        print_json([table.summary(r) for r in found]) if a.json else print(printable(table.runs_table(found)))
    else:
        raise ConfigError(f"usage: {RUNS_USAGE}")
    return 0


def report(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..engine.evaluator import report as make_report

    print(f"report: {make_report(a.target, ov)}")
    return 0


SWEEP_USAGE = "dogcat sweep SPACE.yaml [--trials=N ...] | dogcat sweep show NAME"


def sweep(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat sweep SPACE.yaml``: run trials; ``dogcat sweep show NAME``: the study so far."""
    from .. import sweep as sweeps

    words = a.words
    if words[:1] == ["show"] and len(words) == 2:
        extra = [k for k in ov if k != "runs_root" and k not in getattr(a, "environ", ())]  # DOGCAT_* variables: for other commands
        if extra:
            raise ConfigError(f"`dogcat sweep show` takes --runs-root and --storage, not --{extra[0]}")
        from ..sweep.results import find_sweep, table

        data = sweeps.show(find_sweep(words[1], str(ov.get("runs_root", "runs"))), a.storage)
        print_json(data) if a.json else print(printable(table(data)))
        return 0
    if len(words) != 1 or words[0] == "show":
        raise ConfigError(f"usage: {SWEEP_USAGE}")
    if a.print_config:
        from ..sweep.space import read_space

        space = read_space(words[0], ov)
        searched = "".join(f"#   {p.describe()}\n" for p in space.params)
        return print_config(space.base, f"# every trial of {words[0]} starts from this config; drawn per trial:\n"
                                         f"{searched}")
    out = sweeps.sweep(words[0], trials=a.trials, timeout=a.timeout, name=a.name, storage=a.storage,
                       pruner=a.pruner, seed=a.seed, overrides=ov)
    result = {"folder": str(out.folder), "ran": out.ran, "done": out.done, "best_trial": out.best_number,
              "best_value": out.best_value, "best_recipe": str(out.folder / "best.yaml") if out.best_number is not None
              else None}
    if a.json:
        print_json(result)
    else:
        print(f"sweep folder: {out.folder} ({out.done}/{a.trials} trials finished or pruned, {out.ran} run here)")
        if out.best_number is not None:
            print(f"best: trial {out.best_number}, {out.best_value:.4f}; recipe {result['best_recipe']}")
    return 0


def prepare(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..data import BadFiles
    from ..data import prepare as run_prepare

    packed = run_prepare(a.data, load_config(ov).data, a.size)
    BadFiles(None).add([(str(packed.base / p), r) for p, r in packed.bad.items()])  # warned as training does
    print(f"cache: {packed.path}\n{len(packed.rows)} images at {packed.size}x{packed.size} "
          f"({packed.nbytes / 2**20:.0f} MiB), {len(packed.bad)} unreadable (listed in bad_files.txt there)")
    return 0


def stats(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..data import dataset_stats

    result = dataset_stats(a.data, load_config(ov).data)
    print_json(result.to_dict()) if a.json else print(printable(result.format()))
    return 0


def models(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..models import list_models

    for name, doc in list_models().items():
        print(f"  {name:<12} {doc}")
    print("  timm:<name>        any timm model, e.g. timm:resnet50 (`python -c 'import timm; print(timm.list_models())'`)")
    print("  torchvision:<name> any torchvision classification model, e.g. torchvision:efficientnet_b0")
    return 0


def demo(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..demo import config, run

    if a.print_config:
        return print_config(config(ov, a.config))
    return run(ov, a.config)


def recipes(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """The built-in recipes with their one-line descriptions, or one recipe's YAML (to copy and edit)."""
    from ..config import builtin

    if a.name is None:
        listing = builtin.listing()
        width = max(len(n) for n, _ in listing)
        for name, doc in listing:
            print(f"  {name:<{width}}  {doc}")
        return 0
    recipe = builtin.builtin(a.name)
    if recipe is None:
        raise ConfigError(f"no built-in recipe {a.name!r}; built in: {', '.join(builtin.names())}")
    sys.stdout.write(recipe.read_text(encoding="utf-8"))
    return 0
