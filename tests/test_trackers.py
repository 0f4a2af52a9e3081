"""Trackers (``--logger``): MLflow's real file store read back with MLflow's own client, W&B's offline run files,
the one-line error for a missing package, and a broken tracking server that must not stop a training."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dogcat.cli import main
from dogcat.config import LOGGERS, ConfigError, load_config
from dogcat.tracking.loggers import BACKENDS, register_logger
from dogcat.tracking.tracker import check_loggers

mlflow = pytest.importorskip("mlflow", reason="the [dev] extra installs mlflow-skinny")
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
    """One finished 2-epoch run logged to TensorBoard, MLflow (the default file store) and, where installed, W&B
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


def test_mlflow_file_store_holds_the_runs_records(logged):
    c, run_id = client(logged)
    assert c.tracking_uri == (logged.parent / "mlruns").resolve().as_uri()  # default: beside the run folder
    run = c.get_run(run_id)
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
