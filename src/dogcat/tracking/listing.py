"""``dogcat runs``: the runs under a folder as a table, one run in detail, two runs side by side.

Everything is read from the run folders (config.yaml, status, manifest.json, metrics.jsonl); nothing is
loaded into torch, so listing a hundred runs is quick.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import NOT_EXPERIMENT, flat_config
from ..console import escape
from ..io import MalformedFile, one_line
from ..locks import process_alive
from ..metrics import DEFAULT_MONITOR, best_of
from .folder import RunFolder
from .manifest import read_manifest
from .records import EPOCH, TIME, VOLATILE, is_event, is_kind


@dataclass
class RunInfo:
    """What the table shows about one run folder."""

    path: Path
    status: str
    config: dict[str, Any]   # flat: option -> value
    manifest: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)  # the epoch records of metrics.jsonl
    last_time: float | None = None  # time of the last record
    early_stop: str | None = None   # the reason, when early stopping (--patience) ended the run

    @property
    def name(self) -> str:
        return self.path.name

    def best(self) -> tuple[str, float, int] | None:
        """``(monitor, best value, its epoch)`` from the epoch records."""
        monitor = str(self.config.get("monitor", DEFAULT_MONITOR))
        pts = [(r[monitor], r[EPOCH]) for r in self.epochs if isinstance(r.get(monitor), (int, float))]
        if not pts:
            return None
        try:
            value, epoch = pts[best_of(monitor, [v for v, _ in pts])]
        except KeyError:  # a monitor this version does not know (a newer dogcat's run): no best to show
            return None
        return monitor, value, epoch

    def duration(self) -> float | None:
        """Seconds spent training, over every session (a crashed session counts up to its last record)."""
        m = self.manifest
        total = sum(s.get("duration_s") or 0.0 for s in m.get("previous_sessions", []))
        if m.get("duration_s") is not None:
            return total + m["duration_s"]
        if m.get("start_unix") is None:
            return None
        end = time.time() if self.status == "running" else (self.last_time or m["start_unix"])
        return total + max(0.0, end - m["start_unix"])

    def data(self) -> str:
        d = self.manifest.get("data") or {}
        layout = d.get("layout") or d.get("kind") or self.config.get("dataset", "?")  # "kind": older manifests
        # what the layout named its source in the manifest; runs recorded before that: the training option
        root = d["source"] if "source" in d else self.config.get("train_list") or self.config.get("train_data_root")
        root = root or ""
        label = f"{layout}:{Path(str(root)).name}" if root else str(layout)
        return label + (f" ({d['sha256'][:8]})" if d.get("sha256") else "")


def effective_status(path: Path, manifest: dict[str, Any]) -> str:
    """The status file's word, except that "running" with a dead or unknown process reads "dead"."""
    status = RunFolder(path).status()
    if status == "running":
        alive = process_alive(manifest.get("pid"), manifest.get("pid_start"), manifest.get("host"))
        if alive is False:
            return "dead"  # killed (SIGKILL, out of memory, power): nobody wrote its final status
        if alive is None:
            return f"running? (on {manifest.get('host')})"
    return status


def load_run(path: Path) -> RunInfo:
    """What ``dogcat runs`` shows about one run folder; a damaged file of it is a MalformedFile naming it."""
    folder = RunFolder(path)
    config = {str(k): v for k, v in flat_config(folder.config_tree()).items()}
    manifest = read_manifest(folder.path)
    epochs, last_time, early = [], None, None
    for r in folder.iter_records():  # a line cut short by a kill is skipped there
        if isinstance(r.get(TIME), (int, float)):
            last_time = r[TIME]
        if is_kind(r, EPOCH) and isinstance(r.get(EPOCH), int):
            epochs.append(r)
            early = None  # an epoch after an early stop: a resume trained on (with more patience)
        elif is_event(r, "early_stop"):
            early = str(r.get("reason") or "early stop")
    return RunInfo(folder.path, effective_status(folder.path, manifest), config, manifest, epochs, last_time, early)


def find_runs(root: Path | str = "runs") -> list[RunInfo]:
    """Run folders (those with a config.yaml) directly under ``root``, oldest first. A run whose files are
    damaged is left out with one warning naming it; the others are listed."""
    root = Path(root)
    runs = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not RunFolder(p).is_run():
            continue
        try:
            info = load_run(p)
            _row(info, [])  # everything the table shows about it can be shown
        except Exception as e:  # noqa: BLE001 - one broken run must not hide the others
            warnings.warn(f"skipping run {escape(p)}: {one_line(e, 200)}")
            continue
        runs.append(info)
    return sorted(runs, key=lambda r: (str(r.manifest.get("first_start_time") or r.manifest.get("start_time") or ""),
                                       r.name))


def differing_options(runs: list[RunInfo]) -> list[str]:
    """Options whose values are not the same in every listed run (place and display options left out)."""
    keys = sorted({k for r in runs for k in r.config} - NOT_EXPERIMENT)
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(v: Any, width: int = 28) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[list[str]]) -> str:
    rows = [[escape(c) for c in r] for r in rows]  # a run or data name with a newline or ESC: one cell
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _row(r: RunInfo, extra: list[str]) -> list[str]:
    best = r.best()
    done = r.epochs[-1][EPOCH] if r.epochs else 0
    status = f"{r.status} (early stop)" if r.early_stop and r.status == "finished" else r.status
    return [r.name, status, _fmt(r.config.get("model", "?")), r.data(), f"{done}/{r.config.get('max_epoch', '?')}",
            f"{best[0]} {best[1]:.4f} @{best[2]}" if best else "-", fmt_duration(r.duration()),
            *[_fmt(r.config.get(k)) for k in extra]]


def runs_table(runs: list[RunInfo]) -> str:
    """The ``dogcat runs`` table: one line a run, plus a column for each option that differs."""
    if not runs:
        return "no runs"
    extra = differing_options(runs) if len(runs) > 1 else []
    rows = [["name", "status", "model", "data", "epochs", "best", "duration", *extra]]
    rows += [_row(r, extra) for r in runs]
    return table(rows)


def summary(r: RunInfo) -> dict[str, Any]:
    """One run as plain data (``dogcat runs --json``): what the table shows, unformatted, and every option."""
    best = r.best()
    return {"name": r.name, "path": str(r.path), "status": r.status, "model": r.config.get("model"),
            "data": r.data(), "epochs": r.epochs[-1][EPOCH] if r.epochs else 0,
            "max_epoch": r.config.get("max_epoch"),
            "best": {"metric": best[0], "value": best[1], "epoch": best[2]} if best else None,
            "duration_s": r.duration(), "early_stop": r.early_stop, "options": r.config}


def manifest_summary(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The manifest's main facts as (label, text) pairs, for ``runs show`` and the report."""
    if not m:
        return [("manifest", "none (a run from before manifests, or unreadable)")]
    git, v, d, dev = m.get("git") or {}, m.get("versions") or {}, m.get("data") or {}, m.get("devices") or {}
    commit = git.get("commit") or git.get("error") or "-"
    if git.get("dirty"):
        commit += f" + uncommitted changes ({git.get('patch')})"
    exit_ = m.get("exit") or {}
    return [
        ("git commit", commit),
        ("data", f"{d.get('layout', d.get('kind', '-'))} sha256 {d.get('sha256', '-')} "
                 f"({d.get('count', '?')} files, {d.get('root', '')})"),
        ("splits", ", ".join(m.get("splits") or []) or "-"),
        ("versions", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "cuda", "cudnn", "dogcat")
                               if k in v)),
        ("device", f"{m.get('device', '-')} (GPUs: {', '.join(dev.get('cuda') or []) or 'none'}; "
                   f"CPU: {dev.get('cpu', '-')})"),
        ("host", f"{m.get('host', '-')}, pid {m.get('pid', '-')}"),
        ("command", " ".join(m.get("command") or [])),
        ("seed", f"{m.get('seed')} (split seed {m.get('split_seed')})"),
        ("started", str(m.get("first_start_time") or m.get("start_time"))),
        ("ended", f"{m.get('end_time') or '-'}, exit {exit_.get('status', '-')} (code {exit_.get('code', '-')})"
                  + (f": {exit_['error']}" if exit_.get("error") else "")),
        ("sessions", str(1 + len(m.get("previous_sessions") or []))),
    ]


def final_metrics(r: RunInfo) -> dict[str, Any]:
    last = r.epochs[-1] if r.epochs else {}
    out = {k: v for k, v in last.items() if k not in VOLATILE}
    best = r.best()
    if best:
        out[f"best {best[0]}"] = f"{best[1]:.4f} @ epoch {best[2]}"
    return out


def show_data(path: Path) -> dict[str, Any]:
    """``dogcat runs show RUN --json``: the summary, the final metrics and the whole manifest."""
    def data(path: Path) -> dict[str, Any]:
        r = load_run(path)
        return {**summary(r), "final_metrics": final_metrics(r), "manifest": r.manifest}

    return _damaged_as_error(path, data, path)


def show(path: Path) -> str:
    """``dogcat runs show RUN``: status, config, manifest summary and the last epoch's metrics."""
    return _damaged_as_error(path, _show, path)


def _damaged_as_error(path: Path, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, with the errors a run folder's damaged files cause turned into one MalformedFile line."""
    try:
        return fn(*args)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        if isinstance(e, MalformedFile):
            raise
        raise MalformedFile(f"run {path}: a file of it is damaged or of another shape "
                            f"({type(e).__name__}: {one_line(e, 200)})") from None


def _show(path: Path) -> str:
    r = load_run(path)
    lines = [f"run {r.path}: {r.status}, {len(r.epochs)} epoch(s), {fmt_duration(r.duration())}"]
    lines += [r.early_stop] if r.early_stop else []
    lines += ["", "config:"]
    lines += ["  " + x for x in (RunFolder(r.path).config_text() or "").splitlines()]
    lines += ["", "manifest:"] + [f"  {k + ':':<12} {v}" for k, v in manifest_summary(r.manifest)]
    lines += ["", "last metrics:"] + [f"  {k + ':':<22} {_fmt(v, 60)}" for k, v in final_metrics(r).items()]
    return "\n".join(lines)


def _manifest_facts(m: dict[str, Any]) -> dict[str, Any]:
    git, d = m.get("git") or {}, m.get("data") or {}
    facts = {"git commit": git.get("commit"), "uncommitted patch": git.get("patch_sha256"),
             "data fingerprint": d.get("sha256"), "data files": d.get("count"), "host": m.get("host"),
             "device": m.get("device")}
    facts.update({f"version {k}": v for k, v in (m.get("versions") or {}).items()})
    return facts


def diff_data(a: Path, b: Path) -> dict[str, Any]:
    """``dogcat runs diff A B`` as data: ``{section: {key: [A's, B's]}}`` for what differs, and both runs'
    final metrics (options, manifest facts and installed packages that differ)."""
    return _damaged_as_error(a if a == b else Path(f"{a} or {b}"), _diff_data, a, b)


def _diff_data(a: Path, b: Path) -> dict[str, Any]:
    ra, rb = load_run(a), load_run(b)
    conf = {k: [ra.config.get(k), rb.config.get(k)] for k in sorted(set(ra.config) | set(rb.config))
            if ra.config.get(k) != rb.config.get(k)}
    fa, fb = _manifest_facts(ra.manifest), _manifest_facts(rb.manifest)
    facts = {k: [fa.get(k), fb.get(k)] for k in fa | fb if fa.get(k) != fb.get(k)}
    pa = dict(x.split("==", 1) for x in ra.manifest.get("pip_freeze", []) if "==" in x)
    pb = dict(x.split("==", 1) for x in rb.manifest.get("pip_freeze", []) if "==" in x)
    facts |= {f"package {n}": [pa.get(n), pb.get(n)] for n in sorted(set(pa) | set(pb)) if pa.get(n) != pb.get(n)}
    ma, mb = final_metrics(ra), final_metrics(rb)
    return {"a": {"path": str(ra.path), "status": ra.status}, "b": {"path": str(rb.path), "status": rb.status},
            "config": conf, "manifest": facts,
            "final_metrics": {k: [ma.get(k), mb.get(k)] for k in dict.fromkeys([*ma, *mb])}}


def diff(a: Path, b: Path) -> str:
    """``dogcat runs diff A B``: options, manifest facts and installed packages that differ; final metrics."""
    d = diff_data(a, b)
    out = [f"A: {d['a']['path']} ({d['a']['status']})", f"B: {d['b']['path']} ({d['b']['status']})", ""]
    for title, key, head, width in (("config differences:", "config", "option", 40),
                                    ("manifest differences:", "manifest", "", 40),
                                    ("final metrics:", "final_metrics", "metric", 30)):
        rows = [[k, _fmt("-" if va is None else va, width), _fmt("-" if vb is None else vb, width)]
                for k, (va, vb) in d[key].items()]
        out += [title, table([[head, "A", "B"], *rows]) if rows else "  (none)", ""]
    return "\n".join(out[:-1])
