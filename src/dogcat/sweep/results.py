"""``dogcat sweep show NAME``: the trials as a table, the best one, parameter importances, two PNGs, and
``best.yaml`` (the best trial's whole recipe, ready for ``dogcat train --config``)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..config import LOCAL, RUN_NAME, ConfigError, flat_config
from ..io import MalformedFile, atomic_write_figure, atomic_write_text
from ..jsonfiles import read_json
from ..tracking.folder import RunFolder
from .storage import INFO, _optuna, open_for_reading, trial_dir

log = logging.getLogger("dogcat")

BEST = "best.yaml"
PLACES = LOCAL | {"env", "resume"}


def find_sweep(spec: str, runs_root: str | Path = "runs") -> Path:
    """A sweep folder from its path or its name under ``runs_root``."""
    for cand in (Path(spec), Path(runs_root) / spec):
        if (cand / INFO).is_file():
            return cand
    raise ConfigError(f"no sweep {spec!r} (looked for {spec}/{INFO} and {runs_root}/{spec}/{INFO})")


def read_info(folder: Path) -> dict[str, Any]:
    """The sweep's record (sweep.json), checked: a sweep folder may come from elsewhere, and a damaged or crafted
    record is one :class:`~dogcat.io.MalformedFile` line naming it."""
    path = folder / INFO
    info = read_json(path, "sweep record", limit=1 << 20)
    for key, kinds in (("name", (str,)), ("storage", (str, type(None))), ("monitor", (str, type(None)))):
        if not isinstance(info.get(key), kinds):
            raise MalformedFile(f"sweep record {path}: {key} is {info.get(key)!r}, not "
                                + (" or ".join("null" if k is type(None) else "text" for k in kinds))
                                + "; it is damaged or not one of dogcat's files")
    if not RUN_NAME.fullmatch(info["name"]):
        raise MalformedFile(f"sweep record {path}: name {info['name']!r} is not a plain name")
    return info


def load(folder: Path, storage: str | None = None) -> Any:
    """The study of a sweep folder, read-only (storage.open_for_reading), from ``storage`` (the command line's)
    or the file its sweep.json records inside the folder (default: study.db)."""
    info = read_info(folder)
    url = storage or info["storage"]
    if url and "***" in url:
        raise ConfigError(f"the sweep's storage needs its password: pass --storage=URL ({url})")
    optuna = _optuna()
    st, where = open_for_reading(folder, url, given=storage is not None)
    try:
        return optuna.load_study(study_name=info["name"], storage=st)
    except KeyError:
        raise ConfigError(f"no study {info['name']!r} in {where}") from None


def _value(t: Any) -> float | None:
    if t.value is not None:
        return float(t.value)
    if t.intermediate_values:  # a pruned trial: its last report
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


def rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: number, state, params, objective, epochs reported, duration, reason."""
    out = []
    for t in study.get_trials(deepcopy=False):
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        reason = t.user_attrs.get("pruned_reason") or t.user_attrs.get("fail_reason") or t.user_attrs.get("note")
        run_dir = t.user_attrs.get("run_dir")  # shown only; a study from elsewhere may hold anything there
        out.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params), "value": _value(t),
                    "epochs": len(t.intermediate_values), "duration_s": dur,
                    "run_dir": None if run_dir is None else str(run_dir),
                    "reason": None if reason is None else str(reason)})
    return out


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the finished trials; {} when there are too few."""
    optuna = _optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def plots(study: Any, folder: Path) -> list[Path]:
    """history.png (objective per trial, best so far) and parallel.png (parameters against the objective)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm

    written = []
    for name, fn in (("history.png", vm.plot_optimization_history), ("parallel.png", vm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(10, 5.5)
            fig.tight_layout()
            try:
                written.append(atomic_write_figure(folder / name, fig))  # a link at the name is replaced
            finally:
                plt.close(fig)
        except (ValueError, RuntimeError, KeyError) as e:  # too few trials to draw
            log.info(f"{name}: not drawn ({e})")
    return written


def write_best(study: Any, folder: Path) -> tuple[int, float] | None:
    """``folder/best.yaml``: the best trial's resolved config without the places it wrote to; None when no
    trial has finished (or its run folder is on another machine)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    run = RunFolder(folder / trial_dir(best.number))  # by its number, here: never a path the study names
    run_dir = run.path
    if not run.is_run():
        log.warning(f"best trial {best.number}: no {run.config} here (another machine's?): no {BEST}")
        return best.number, float(best.value)
    try:
        tree = run.config_tree()
    except MalformedFile as e:  # a damaged trial folder: the table is still shown
        log.warning(f"best trial {best.number}: {e}; no {BEST}")
        return best.number, float(best.value)
    tree = {sec: {k: v for k, v in opts.items() if k not in PLACES} for sec, opts in tree.items()
            if isinstance(opts, dict)}
    monitor = next((v for k, v in flat_config(tree).items() if k == "monitor"), "objective")
    head = (f"# Best trial of sweep {folder.name}: trial {best.number} ({run_dir.name}), {monitor} {best.value:.4f}\n"
            f"# searched: {json.dumps(best.params)}\n# dogcat train --config={folder / BEST}\n")
    atomic_write_text(folder / BEST, head + yaml.safe_dump(tree, sort_keys=False))
    return best.number, float(best.value)


def show(folder: Path, storage: str | None = None) -> dict[str, Any]:
    """Everything ``dogcat sweep show`` prints, as data; writes the PNGs and best.yaml into ``folder``."""
    study = load(folder, storage)
    info = read_info(folder)
    best = write_best(study, folder)
    return {"folder": str(folder), "name": info["name"], "monitor": info.get("monitor"),
            "direction": study.direction.name.lower(), "trials": rows(study),
            "best": {"number": best[0], "value": best[1], "recipe": str(folder / BEST)} if best else None,
            "importances": importances(study), "plots": [str(p) for p in plots(study, folder)]}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table(data: dict[str, Any]) -> str:
    """The text of ``dogcat sweep show``."""
    params = sorted({k for r in data["trials"] for k in r["params"]})
    head = ["trial", "state", *params, data["monitor"] or "objective", "epochs", "duration", "note"]
    body = [[str(r["number"]), r["state"], *(_fmt(r["params"].get(p)) for p in params), _fmt(r["value"]),
             str(r["epochs"]), f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-",
             (r["reason"] or "")[:70]] for r in data["trials"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    states = [r["state"] for r in data["trials"]]
    lines.insert(0, f"sweep {data['name']} ({data['folder']}): {len(states)} trials, "
                    + ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running")
                                if states.count(s)) + f"; objective {data['monitor']} ({data['direction']})\n")
    if data["best"]:
        b = data["best"]
        lines += ["", f"best: trial {b['number']}, {data['monitor']} {b['value']:.4f}; recipe {b['recipe']}"]
    if data["importances"]:
        lines += ["", "parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in data["importances"].items())]
    if data["plots"]:
        lines += ["", "plots: " + ", ".join(data["plots"])]
    return "\n".join(lines)
