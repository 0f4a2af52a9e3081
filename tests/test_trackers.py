"""Trackers (``--logger``): MLflow's real stores (the default SQLite database, a file store) read back with MLflow's
own client and `mlflow ui`, W&B's offline run files, the one-line error for a missing package, and a broken
tracking server that must not stop a training."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dogcat.cli import main
from dogcat.config import LOGGERS, ConfigError, load_config
from dogcat.tracking.loggers import BACKENDS, register_logger
from dogcat.tracking.tracker import check_loggers

mlflow = pytest.importorskip("mlflow", reason="the [dev] extra installs mlflow")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file-store readers to opt in too
HAS_WANDB = bool(__import__("importlib").util.find_spec("wandb"))

FAST = ["--image-size=32", "--batch-size=4", "--num-workers=0", "--model=smallcnn", "--print-freq=2",
        "--progress=none", "--lr=0.01"]


def tiny_data(root: Path) -> Path:
    from datagen import make_folder

    make_folder(root / "train", classes=("cat", "dog"), n_per_class=6, sizes=(32, 40))
    make_folder(root / "val", classes=("cat", "dog"), n_per_class=2, sizes=(32, 40))
    return root


def train_argv(root: Path, runs: Path, *extra: str) -> list[str]:
    return ["train", f"--train-data-root={root / 'train'}", f"--val-data-root={root / 'val'}",
            f"--runs-root={runs}", *FAST, *extra]


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


def client(run: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run / "trackers.json").read_text())["mlflow"]
    return MlflowClient(saved["uri"]), saved["run_id"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, monkeypatch_module):
    """One finished 2-epoch run logged to TensorBoard, MLflow (the default SQLite store) and, where installed, W&B
    (offline); W&B's own folders point into tmp."""
    root = tiny_data(tmp_path_factory.mktemp("trackers"))
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch_module.setenv(var, str(root / "wandb-home"))
    monkeypatch_module.setenv("WANDB_SILENT", "true")
    loggers = "tensorboard,mlflow" + (",wandb" if HAS_WANDB else "")
    assert main(train_argv(root, root / "runs", "--env=a", "--max-epoch=2", f"--logger={loggers}")) == 0
    return root / "runs" / "a"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_mlflow_default_sqlite_store_holds_the_runs_records(logged):
    c, run_id = client(logged)
    db = (logged.parent / "mlflow.db").resolve()
    assert c.tracking_uri == f"sqlite:///{db}"  # default: a database beside the run folder, by absolute path
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sorted(p.name for p in logged.parent.iterdir()) == ["a", "mlartifacts", "mlflow.db"]  # no lock, no temp
    run = c.get_run(run_id)
    assert run.info.artifact_uri.startswith((logged.parent / "mlartifacts").resolve().as_uri() + "/")
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    assert run.data.tags["dogcat.status"] == "finished"
    assert c.get_experiment(run.info.experiment_id).name == "dogcat"
    # params: the flat config, as config.yaml has it
    cfg = load_config(config_file=logged / "config.yaml")
    assert run.data.params["model"] == "smallcnn" and run.data.params["max_epoch"] == "2"
    assert run.data.params["lr"] == str(cfg.optim.lr) and run.data.params["logger"] == cfg.train.logger
    # per-step and per-epoch metrics: metrics.jsonl's, on its step axis
    steps = records(logged, "step")
    history = c.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["train_loss"])) for r in steps]
    epochs = records(logged, "epoch")
    acc = c.get_metric_history(run_id, "val/accuracy")
    assert [(m.step, m.value) for m in acc] == [(r["step"], pytest.approx(r["val_accuracy"])) for r in epochs]
    assert len(c.get_metric_history(run_id, "epoch/train_loss")) == 2
    assert run.data.metrics["final/best_val_accuracy"] == pytest.approx(max(r["val_accuracy"] for r in epochs))
    # artifacts: the run folder's records
    names = {a.path for a in c.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.jsonl", "manifest.json"} <= names
    got = Path(c.download_artifacts(run_id, "config.yaml", str(logged.parent / "download")))
    assert got.read_text() == (logged / "config.yaml").read_text()


def test_tensorboard_still_writes_beside_mlflow(logged):
    assert list(logged.glob("events.out.tfevents.*"))


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log (W&B's LevelDB-style log: 7-byte file header, 32 KiB blocks of
    chunks, each ``crc32 u32 | length u16 | type u8`` (full / first / middle / last) then its bytes)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    out, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'dogcat-vision[wandb]')")
def test_wandb_offline_run_files(logged):
    saved = json.loads((logged / "trackers.json").read_text())["wandb"]
    (run_dir,) = (logged / "wandb").glob(f"offline-run-*-{saved['id']}")
    recs = read_wandb_records(run_dir / f"run-{saved['id']}.wandb")
    kinds = [r.WhichOneof("record_type") for r in recs]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    logged_loss = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert logged_loss == [(r["step"], pytest.approx(r["train_loss"])) for r in records(logged, "step")]
    assert [h["val/accuracy"] for h in history if "val/accuracy" in h] == \
        [pytest.approx(r["val_accuracy"]) for r in records(logged, "epoch")]
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for r in recs if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["status"] == "finished" and "final/best_val_accuracy" in summary
    config = {i.key: json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") in ("run", "config")
              for i in (r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update)}
    assert config["model"] == "smallcnn" and config["max_epoch"] == 2
    assert [r.exit.exit_code for r in recs if r.WhichOneof("record_type") == "exit"] == [0] and "run" in kinds
    assert (run_dir / "files" / "config.yaml").read_text() == (logged / "config.yaml").read_text()
    assert (run_dir / "files" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_missing_package_is_one_line_exit_2_and_no_run_folder(package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: importing it fails
    root = tiny_data(tmp_path)
    runs = tmp_path / "runs"
    assert main(train_argv(root, runs, f"--logger=tensorboard,{package}")) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert f"pip install 'dogcat-vision[{package}]'" in err and f"--logger={package}" in err
    assert not runs.exists()


def test_logger_names_are_checked_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--logger=tensorboard,neptune"]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'neptune'" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    assert load_config({"logger": "MLflow, tensorboard,mlflow"}).train.logger == "mlflow,tensorboard"
    assert load_config({"logger": "none"}).train.logger == "none"
    with pytest.raises(ConfigError, match="goes alone"):
        load_config({"logger": "none,mlflow"})
    with pytest.raises(ConfigError, match="one of: offline, online"):
        load_config({"wandb_mode": "sometimes"})


def test_registry_is_the_configs_list():
    assert set(BACKENDS) == set(LOGGERS)
    with pytest.raises(ValueError, match="already registered"):
        register_logger("mlflow")(lambda s: None)
    check_loggers("none")  # nothing asked, nothing needed


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_warns_once_and_training_finishes(tmp_path, monkeypatch):
    """A server that goes away after the start (here: never there, its start check switched off; a server that
    is not there at the start is refused, tests/test_safety_secrets.py)."""
    import dataclasses

    from dogcat import train

    monkeypatch.setitem(BACKENDS, "mlflow", dataclasses.replace(BACKENDS["mlflow"], check=None))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once rather than after MLflow's backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    root = tiny_data(tmp_path)
    with pytest.warns(UserWarning, match="mlflow logging switched off") as caught:
        result = train(train_data_root=str(root / "train"), val_data_root=str(root / "val"), max_epoch=1,
                       runs_root=str(tmp_path / "runs"), image_size=32, batch_size=4, num_workers=0,
                       model="smallcnn", progress="none", logger="tensorboard,mlflow",
                       mlflow_uri=f"http://127.0.0.1:{closed_port()}")
    assert len([w for w in caught if "mlflow" in str(w.message)]) == 1
    assert (result.run_dir / "status").read_text().strip() == "finished"
    assert list(result.run_dir.glob("events.out.tfevents.*"))  # the other tracker went on


def test_stopped_run_resumes_into_the_same_mlflow_run(tmp_path):
    from dogcat import train

    root = tiny_data(tmp_path)
    store = tmp_path / "store"  # a plain folder for --mlflow-uri: a file store there
    opts = dict(train_data_root=str(root / "train"), val_data_root=str(root / "val"), runs_root=str(tmp_path / "runs"),
                image_size=32, batch_size=4, num_workers=0, model="smallcnn", progress="none", print_freq=1,
                logger="mlflow", mlflow_uri=str(store), max_epoch=2)
    first = train(**opts, max_steps=2, env="r")
    c, run_id = client(first.run_dir)
    assert c.get_run(run_id).info.status == "KILLED" and c.tracking_uri == store.resolve().as_uri()
    assert not list(first.run_dir.glob("events.out.tfevents.*"))  # tensorboard not asked for
    train(resume=str(first.run_dir), runs_root=str(tmp_path / "runs"), max_steps=None, mlflow_uri=str(store))
    c, again = client(first.run_dir)
    assert again == run_id and c.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [r["step"] for r in records(first.run_dir, "step")]


def test_import_dogcat_loads_no_tracker_library():
    code = ("import sys, dogcat, dogcat.cli, dogcat.engine.trainer; "
            "print(int('mlflow' in sys.modules), int('wandb' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]


@pytest.mark.parametrize("status, expected", [("failed", "FAILED"), ("stopped", "KILLED"), ("finished", "FINISHED")])
def test_mlflow_status_of_each_ending(status, expected, tmp_path):
    from dogcat.tracking.loggers import Ending, Session
    from dogcat.tracking.mlflow_logger import MlflowBackend

    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("a: 1\n")
    backend = MlflowBackend(Session(run_dir, load_config(), None, None, {"lr": 0.1, "milestones": [3, 6]}))  # type: ignore[arg-type]
    backend.log({"kind": "step", "step": 3, "train_loss": 0.5})
    backend.log({"kind": "event", "event": "resume", "step": 3})  # no scalars: nothing to log
    backend.finish(Ending(status, {"hparam/val_accuracy": 0.75}, 3, [run_dir / "config.yaml"]))
    c, run_id = backend.client, backend.run_id
    run = c.get_run(run_id)
    assert run.info.status == expected and run.data.tags["dogcat.status"] == status
    assert run.data.params == {"lr": "0.1", "milestones": "[3, 6]"}
    assert run.data.metrics == {"train/loss": 0.5, "final/val_accuracy": 0.75}
    assert [a.path for a in c.list_artifacts(run_id)] == ["config.yaml"]


RACER = """
import sys, time
from mlflow.tracking import MlflowClient
from dogcat.tracking.mlflow_logger import open_store
uri, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:  # every process imported MLflow: now all at once
    time.sleep(0.01)
open_store(uri)
c = MlflowClient(tracking_uri=uri)
exp = c.get_experiment_by_name("dogcat")
exp_id = exp.experiment_id if exp else c.create_experiment("dogcat")
run = c.create_run(exp_id)
c.log_metric(run.info.run_id, "x", 1.0)
"""


def test_open_store_builds_a_new_sqlite_store_once_under_its_lock(tmp_path):
    """The rule of the four-process race below (`make test-all`), in one process: while another holds the store's
    lock (building it), open_store waits and then takes the whole file it finds; alone, it builds a database
    MLflow's client uses, and leaves no lock or temp file."""
    import threading

    from mlflow.tracking import MlflowClient

    from dogcat.locks import FileLock
    from dogcat.tracking.mlflow_logger import open_store

    runs = tmp_path / "runs"
    db, built = runs / "mlflow.db", tmp_path / "built" / "mlflow.db"
    holder = FileLock(runs / ".mlflow.db.lock").acquire()  # flock: a second open file of this process waits too
    waiter = threading.Thread(target=open_store, args=(f"sqlite:///{db}",))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not db.exists()  # no second build while the first holds the lock
    open_store(f"sqlite:///{built}")  # the holder's build, renamed into place as open_store does
    os.replace(built, db)
    inode = db.stat().st_ino
    holder.release(remove=True)
    waiter.join(120)
    assert not waiter.is_alive() and db.stat().st_ino == inode  # it found the whole file: not rebuilt
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = c.create_run(c.create_experiment("dogcat"))
    c.log_metric(run.info.run_id, "x", 1.0)
    assert sorted(p.name for p in runs.iterdir()) == ["mlflow.db"]  # no lock or temp file left
    assert sorted(p.name for p in built.parent.iterdir()) == []


@pytest.mark.slow  # 4 processes importing MLflow at once (~15 s); the rule, in-process: the test above
def test_processes_opening_a_new_sqlite_store_at_once_get_one_whole_database(tmp_path):
    """MLflow makes a new database by running its schema migrations; four processes doing that at once on one file
    broke it for good in 11 of 12 tries (duplicate column, alembic_version races). open_store builds it once."""
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    start = time.time() + 8
    procs = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(start + i * 0.02)], stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in c.search_experiments() if e.name == "dogcat"]
    assert len(c.search_runs([exp.experiment_id])) == 4
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mlflow.db"]  # no lock or temp file left


def test_a_folder_or_file_uri_is_still_a_file_store(tmp_path):
    from dogcat.tracking.mlflow_logger import sqlite_file, tracking_uri

    def uri(value):
        return tracking_uri(type("S", (), {"cfg": load_config({"mlflow_uri": value}), "run_dir": tmp_path / "r"})())

    assert uri(str(tmp_path / "store")) == (tmp_path / "store").as_uri()
    assert uri("file:///x/mlruns") == "file:///x/mlruns" and sqlite_file("file:///x/mlruns") is None
    assert uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert sqlite_file("sqlite:///runs/mlflow.db") == Path("runs/mlflow.db")
    assert sqlite_file("sqlite:////abs/m.db?timeout=30") == Path("/abs/m.db") and sqlite_file("sqlite://") is None


@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("flask"),
                    reason="`mlflow ui` needs the full mlflow (pip install 'dogcat-vision[mlflow]'), not mlflow-skinny")
def test_mlflow_ui_serves_the_runs_of_the_default_store(logged):
    """The command of docs/tracking.md, from the folder that holds runs/, with no MLflow variable set: `mlflow ui` lists the
    run with its metrics and serves its artifacts."""
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    ui = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(ui), "ui", "--backend-store-uri", "sqlite:///runs/mlflow.db", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=logged.parent.parent, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    try:
        deadline = time.time() + 180
        while True:
            try:
                exp = json.loads(get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=dogcat"))["experiment"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()[-3000:]
                time.sleep(1)
        (run,) = json.loads(get("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]}))["runs"]
        assert run["info"]["run_name"] == "a" and run["info"]["status"] == "FINISHED"
        assert "val/accuracy" in {m["key"] for m in run["data"]["metrics"]}
        config = get(f"/get-artifact?path=config.yaml&run_uuid={run['info']['run_id']}")
        assert config == (logged / "config.yaml").read_bytes()
        assert b"<html" in get("/")  # the UI itself
    finally:
        os.killpg(server.pid, 15)  # the server and its workers: a session of their own
        server.wait(timeout=60)


def test_default_store_without_sqlalchemy_warns_once_naming_the_extra(tmp_path, monkeypatch):
    """mlflow-skinny alone (no SQLAlchemy): the default SQLite store cannot open; one warning says what to install,
    and the training finishes with its own records."""
    import importlib.util

    from dogcat import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    root = tiny_data(tmp_path)
    with pytest.warns(UserWarning, match="mlflow logging switched off") as caught:
        result = train(train_data_root=str(root / "train"), val_data_root=str(root / "val"), max_epoch=1,
                       runs_root=str(tmp_path / "runs"), image_size=32, batch_size=4, num_workers=0,
                       model="smallcnn", progress="none", logger="mlflow")
    (warning,) = [str(w.message) for w in caught if "mlflow" in str(w.message)]
    assert "needs sqlalchemy" in warning and "dogcat-vision[mlflow]" in warning and "--mlflow-uri" in warning
    assert (result.run_dir / "status").read_text().strip() == "finished"
    assert not (tmp_path / "runs" / "mlflow.db").exists()
