"""A run folder's layout in one place (RunFolder), its readers on damaged files, metrics.jsonl's schema
(tracking/records.py), and the run writer's sinks."""

from __future__ import annotations

import ast
import json
import os
import threading
from pathlib import Path

import pytest

from dogcat.config import ConfigError, load_config
from dogcat.io import MalformedFile
from dogcat.metrics import DEFAULT_MONITOR, VAL
from dogcat.tracking import records as R
from dogcat.tracking.folder import RunFolder, find_run
from dogcat.tracking.run import Run

SRC = Path(__file__).parents[1] / "src" / "dogcat"


def test_paths_of_a_run_folder(tmp_path):
    f = RunFolder(tmp_path / "r")
    assert (f.config, f.metrics, f.status_file, f.manifest) == tuple(
        tmp_path / "r" / n for n in ("config.yaml", "metrics.jsonl", "status", "manifest.json"))
    assert (f.checkpoints, f.control, f.splits, f.report) == tuple(
        tmp_path / "r" / n for n in ("checkpoints", "control", "splits", "report"))
    assert f.checkpoint("best") == tmp_path / "r" / "checkpoints" / "best.pt"
    assert (f.bad_files.name, f.result.name, f.lock.name, f.debug_trigger) == \
        ("bad_files.txt", "result.json", "lock", tmp_path / "r" / "control" / "debug")
    assert RunFolder(str(tmp_path / "r")) == f and not f.is_run() and f.records() == [] and f.status() == "unknown"


def test_the_writer_writes_where_the_folder_says(tmp_path):
    """Run.create / set_status / log put their files at the RunFolder's paths, and the folder reads them back."""
    run = Run.create(load_config({"run_dir": str(tmp_path / "r")}))
    try:
        f = run.folder
        assert f.is_run() and f.lock.exists() and f.config_tree()["train"]["run_dir"] == str(tmp_path / "r")
        run.set_status("running")
        run.log(R.step_record(1, 1, 0.5, 0.1, 10.0))
        assert f.status() == "running" and [r[R.KIND] for r in f.records()] == [R.STEP]
        assert run.ckpt_dir == f.checkpoints and not hasattr(run, "checkpoint")  # the unused helper is gone
        assert find_run("r", tmp_path) == f.path == find_run(str(f.path)) == find_run("latest", tmp_path)
    finally:
        run.unlock()
    with pytest.raises(ConfigError, match=r"looked for nope/config.yaml"):
        find_run("nope", tmp_path)


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _within(seconds: float, fn):
    """``fn()``'s result or exception, failing the test when it blocks (a FIFO opened for reading would)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on a planted file"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_status_of_damaged_folders(tmp_path):
    f = RunFolder(tmp_path / "r")
    f.path.mkdir()
    f.status_file.write_text("finished\n")
    assert f.status() == "finished"
    f.status_file.write_bytes(b"\xff\xfeweird\n")
    assert "weird" in f.status()  # a damaged word reads as itself
    f.status_file.write_text("")
    assert f.status() == "unknown"
    f.status_file.write_text("x" * 10_000)
    with pytest.raises(MalformedFile, match="status file"):
        f.status()
    f.status_file.unlink()
    f.status_file.mkdir()
    with pytest.raises(MalformedFile, match="status file"):
        f.status()
    g = RunFolder(tmp_path / "g")
    _fifo(g.status_file)
    with pytest.raises(MalformedFile, match="not a regular file"):
        _within(5, g.status)


def test_records_skip_what_is_not_a_record(tmp_path):
    f = RunFolder(tmp_path / "r")
    f.path.mkdir()
    lines = [json.dumps(R.step_record(1, 1, 0.5, 0.1, 9.0)), '{"kind": "epoch", "epo',  # cut short by a kill
             "[1, 2]", "3", "not json", "[" * 100_000 + "]" * 100_000, json.dumps(R.event_record("setup", lr=0.1))]
    f.metrics.write_bytes(("\n".join(lines)).encode() + b"\n\xff\xfe{\n")
    assert [r[R.KIND] for r in f.records()] == [R.STEP, R.EVENT]
    f.metrics.unlink()
    f.metrics.mkdir()
    with pytest.raises(MalformedFile, match="metrics.jsonl"):
        f.records()
    g = RunFolder(tmp_path / "g")
    _fifo(g.metrics)
    with pytest.raises(MalformedFile, match="not a regular file"):
        _within(5, g.records)


def test_config_of_damaged_folders(tmp_path):
    f = RunFolder(tmp_path / "r")
    assert f.config_tree() == {} and f.config_text() is None
    f.path.mkdir()
    f.config.write_text("train: [unclosed\n")
    with pytest.raises(MalformedFile, match="not readable YAML"):
        f.config_tree()
    assert f.config_text() == "train: [unclosed\n"
    f.config.write_text("- a list\n")
    with pytest.raises(MalformedFile, match="not a YAML mapping"):
        f.config_tree()
    g = RunFolder(tmp_path / "g")
    _fifo(g.config)
    with pytest.raises(MalformedFile):
        _within(5, g.config_tree)
    assert _within(5, g.config_text) is None


def test_record_builders_are_the_schema():
    step = R.step_record(7, 2, 0.25, 1e-3, 100.0)
    assert step == {"kind": "step", "step": 7, "epoch": 2, "train_loss": 0.25, "lr": 1e-3, "images_per_s": 100.0}
    epoch = R.epoch_record(2, 8, 0.2, 90.0, 1e-3, 1.5, {"accuracy": 0.75, "loss": 0.6, "confusion": [[1]]})
    assert epoch[R.KIND] == R.EPOCH and epoch[VAL + "accuracy"] == 0.75 and epoch[R.VAL_LOSS] == 0.6
    assert "confusion" not in epoch and not any(k.startswith(VAL + VAL) for k in epoch)
    assert DEFAULT_MONITOR in epoch  # what picks best.pt by default is a key an epoch record has
    ev = R.event_record("early_stop", epoch=3, step=9, reason="r")
    assert R.is_event(ev, "early_stop") and not R.is_event(ev, "pruned") and ev["reason"] == "r"
    with pytest.raises(ValueError, match="unknown metrics.jsonl event 'oops'"):
        R.event_record("oops")
    assert R.epochs([step, epoch, ev, {"kind": "epoch", "epoch": "2"}]) == [epoch]
    assert R.val_name(VAL + "f1_macro") == "f1_macro" and R.val_name("train_loss") is None
    # what a resume drops: step / epoch records past the checkpoint; events are history
    assert [R.logged_after(r, 7, 1) for r in (step, epoch, ev)] == [False, True, False]
    assert [R.logged_after(r, 6, 2) for r in (step, epoch, ev)] == [True, True, False]


class Sink:
    def __init__(self):
        self.records, self.ended = [], []

    def log_record(self, record):
        self.records.append(record)

    def finish(self, status, error=None):
        self.ended.append((status, error))


def test_run_hands_records_and_the_final_status_to_its_sinks(tmp_path):
    run = Run(tmp_path / "r")
    run.path.mkdir()
    sink = Sink()
    run.sinks.append(sink)
    run.set_status("running")
    run.log(R.step_record(1, 1, 0.5, 0.1, 9.0))
    run.log(R.step_record(5, 1, 0.4, 0.1, 9.0))
    run.log(R.event_record("control", command="save"))
    error = RuntimeError("boom")
    run.set_status("failed", error)
    assert [r[R.STEP] for r in sink.records[:2]] == [1, 5] and sink.ended == [("failed", error)]
    assert run.rewind_log(step=2, epoch=0) == 1  # the step logged after the checkpoint goes; the event stays
    assert [r[R.KIND] for r in run.records()] == [R.STEP, R.EVENT]


def test_run_folder_file_names_are_written_once():
    """The names of a run folder's files appear as strings in tracking/folder.py alone."""
    names = {"config.yaml", "metrics.jsonl", "manifest.json", "result.json", "trackers.json", "submission.csv",
             "test_result.json", "bad_files_test.txt", ".disk-reserve"}
    found = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "tracking" / "folder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "run-folder file names outside tracking/folder.py:\n" + "\n".join(found)


def test_run_and_tracker_do_not_refer_to_each_other():
    """The run folder's writer and the trackers meet through records.RecordSink, told by the trainer."""
    def names(module: str) -> set[str]:
        tree = ast.parse((SRC / "tracking" / f"{module}.py").read_text(encoding="utf-8"))
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                out |= {node.module or "", *(a.name for a in node.names)}
            elif isinstance(node, (ast.Name, ast.Attribute)):
                out.add(node.id if isinstance(node, ast.Name) else node.attr)
        return out

    assert not {"tracker", "Tracker", "is_main_process"} & names("run")
    assert not {"run", "Run"} & names("tracker")
