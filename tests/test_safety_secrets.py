"""Issue 21 item 3 and the tracker items of its low list: a credential in ``--mlflow-uri`` (or a sweep's
``--storage``) is used, never stored or shown: not in the run folder, the runs root, the MLflow store, TensorBoard's
event files, W&B's files or any output line; trackers get run-relative paths. An http(s) --mlflow-uri that does
not answer is one line before a run folder exists; MLflow's telemetry is off for dogcat's runs."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from dogcat.cli import main

from hostile import one_error

mlflow = pytest.importorskip("mlflow")
HAS_WANDB = bool(__import__("importlib").util.find_spec("wandb"))
TOKEN = "s3cr3tT0k3nXYZ"
PASSWORD = "dbPa55w0rdQQ"
FAST = ["--image-size=32", "--batch-size=4", "--num-workers=0", "--model=smallcnn", "--print-freq=2",
        "--progress=none", "--lr=0.01"]


def tiny_data(root: Path) -> Path:
    from datagen import make_folder

    make_folder(root / "train", classes=("cat", "dog"), n_per_class=6, sizes=(32, 40))
    make_folder(root / "val", classes=("cat", "dog"), n_per_class=2, sizes=(32, 40))
    return root


def holding(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``secret``."""
    raw = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and raw in p.read_bytes()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server (MLflow's own Flask app, SQLite store, served artifacts) on a local port; it
    takes any credentials (it has no auth), as a server behind a proxy that checks them would."""
    store = tmp_path_factory.mktemp("mlflow-server")
    mp = pytest.MonkeyPatch()
    mp.setenv("_MLFLOW_SERVER_FILE_STORE", f"sqlite:///{store / 'mlflow.db'}")
    mp.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", str(store / "artifacts"))
    mp.setenv("_MLFLOW_SERVER_ARTIFACT_DESTINATION", str(store / "artifacts"))
    mp.setenv("_MLFLOW_SERVER_SERVE_ARTIFACTS", "true")
    from mlflow.server import app
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield store, srv.server_port
    srv.shutdown()
    mp.undo()


@pytest.mark.slow  # a real MLflow server and W&B: 15-30 s; `make test` has the run-folder case below
def test_a_credential_in_the_mlflow_uri_is_stored_and_shown_nowhere(server, tmp_path, monkeypatch, capfd):
    store, port = server
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    root = tiny_data(tmp_path)
    runs = tmp_path / "runs"
    uri = f"http://dogcat:{TOKEN}@127.0.0.1:{port}"
    loggers = "tensorboard,mlflow" + (",wandb" if HAS_WANDB else "")
    args = ["train", f"--train-data-root={root / 'train'}", f"--val-data-root={root / 'val'}", f"--runs-root={runs}",
            *FAST, "--name=r", f"--logger={loggers}", f"--mlflow-uri={uri}", "--max-epoch=1"]
    monkeypatch.setattr(sys, "argv", ["dogcat", *args])  # what the manifest records, as from the console script
    assert main(args) == 0
    resume = ["train", f"--resume={runs / 'r'}", f"--mlflow-uri={uri}", "--max-epoch=2"]
    monkeypatch.setattr(sys, "argv", ["dogcat", *resume])
    assert main(resume) == 0  # the secret comes from the command line again, as any place does
    out, err = capfd.readouterr()
    assert TOKEN not in out + err and "View run" not in out  # no line shows it; stdout holds results only
    assert holding(tmp_path, TOKEN) == [] and holding(store, TOKEN) == []  # run, runs root, W&B, TB, MLflow store
    assert "dogcat:***@127.0.0.1" in (runs / "r" / "manifest.json").read_text()

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"http://127.0.0.1:{port}")
    [found] = c.search_runs([c.get_experiment_by_name("dogcat").experiment_id])
    assert found.info.status == "FINISHED" and found.data.params["mlflow_uri"] == "http://dogcat:***@127.0.0.1:" + \
        str(port)  # one MLflow run: the resume continued it
    assert found.data.params["train_data_root"] == os.path.join("..", "..", "train")  # run-relative paths
    assert found.data.tags["dogcat.run_dir"] == "runs/r"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_a_credential_in_the_mlflow_uri_is_not_in_the_run_folder(tmp_path, monkeypatch, capsys):
    """The run folder's records (config.yaml, manifest.json, checkpoints, TensorBoard's hparams and config card)
    with --mlflow-uri given but only TensorBoard logging: the fast case of the test above."""
    root = tiny_data(tmp_path)
    args = ["train", f"--train-data-root={root / 'train'}", f"--val-data-root={root / 'val'}",
            f"--runs-root={tmp_path / 'runs'}", *FAST, "--name=r", "--logger=tensorboard", "--max-epoch=1",
            f"--mlflow-uri=https://me:{TOKEN}@mlflow.example.org/?token={TOKEN}"]
    monkeypatch.setattr(sys, "argv", ["dogcat", *args])
    assert main(args) == 0
    cap = capsys.readouterr()
    assert TOKEN not in cap.out + cap.err and holding(tmp_path, TOKEN) == []
    assert "me:***@mlflow.example.org/?token=***" in (tmp_path / "runs" / "r" / "config.yaml").read_text()


def test_a_sweep_storage_password_is_not_in_a_trial_manifest(tmp_path, monkeypatch):
    from dogcat import load_config
    from dogcat.tracking.manifest import Manifest

    storage = f"--storage=postgresql://sweeper:{PASSWORD}@dbhost/sweeps"
    monkeypatch.setattr(sys, "argv", ["dogcat", "sweep", "space.yaml", storage])  # a trial runs in this process
    m = Manifest(tmp_path)
    m.start(load_config({}))
    m.finish("failed", RuntimeError(f"could not connect to postgresql://sweeper:{PASSWORD}@dbhost/sweeps"))
    assert holding(tmp_path, PASSWORD) == []
    assert "postgresql://sweeper:***@dbhost/sweeps" in (tmp_path / "manifest.json").read_text()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["nobody listens", "never answers"])
def test_an_mlflow_server_that_does_not_answer_is_one_line_before_a_run_folder(kind, tmp_path, monkeypatch, capsys):
    import dogcat.tracking.mlflow_logger as ml

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # on the old code: fail at once, not after minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setattr(ml, "CHECK_S", 1.0, raising=False)
    root = tiny_data(tmp_path)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
    port = closed_port() if kind == "nobody listens" else silent.getsockname()[1]
    try:
        t0 = time.monotonic()
        rc = main(["train", f"--train-data-root={root / 'train'}", f"--val-data-root={root / 'val'}",
                   f"--runs-root={tmp_path / 'runs'}", *FAST, "--logger=mlflow",
                   f"--mlflow-uri=http://u:{TOKEN}@127.0.0.1:{port}"])
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert rc == 1
    line = one_error(capsys.readouterr().err)
    assert "--mlflow-uri" in line and "did not answer" in line and TOKEN not in line
    assert not (tmp_path / "runs").exists() and took < 30


def test_mlflow_telemetry_stays_as_the_user_set_it(tmp_path, monkeypatch):
    import dogcat.tracking.mlflow_logger as ml

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    ml.quiet_mlflow()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"  # the user's choice
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
