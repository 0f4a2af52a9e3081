"""The ``mlflow`` backend of ``--logger``: one MLflow run per dogcat run, through MLflow's own client.

Where: ``--mlflow-uri`` (a tracking server, ``sqlite:///FILE``, or a ``file:`` store / a plain folder); by default
the SQLite store ``mlflow.db`` beside the run folder, i.e. ``sqlite:///<runs_root>/mlflow.db`` (an absolute path),
so that every run under one runs root is in one store (``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``).
SQLite because MLflow 3 keeps file stores in maintenance mode behind an opt-in (``MLFLOW_ALLOW_FILE_STORE``, which
dogcat gives for ``file:`` stores it writes, and ``mlflow ui`` on one needs too); a database needs no opt-in.
Artifacts of a SQLite store's runs go to ``mlartifacts/`` beside the database file.

A new SQLite store is made whole before anyone uses it (:func:`open_store`): MLflow creates one by running its
schema migrations, and processes doing that at once on one file (a sweep's, or runs started together) broke it
for good in 11 of 12 tries here.

What: params = the flat config; metrics = every metrics.jsonl record under the trackers' tags (loggers.py),
on its step; tags = the run folder and its status; at the end the MLflow status (FINISHED / FAILED / KILLED)
and the run folder's config.yaml, metrics.jsonl, manifest.json (and report/ when there is one) as artifacts.
A resumed run continues the same MLflow run (its id is kept in RUN/trackers.json) when it logs to the same
store: ``--mlflow-uri`` is a local option, given again on the command line of a resume (the default store
needs nothing).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..console import redact
from ..io import fsync_dir, temp_file
from ..locks import FileLock
from .loggers import Backend, Ending, Session, Unreachable, register_logger, scalar_tags
from .records import STEP

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # file:, http:, https:, sqlite:, databricks: ...
log = logging.getLogger("dogcat")
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "pruned": "FINISHED"}
MAX_PARAM = 6000  # MLflow's limit on a param value's length
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
CHECK_S = 5.0  # seconds an http(s) --mlflow-uri has to answer before the run starts


def default_uri(run_dir: Path) -> str:
    """The SQLite store beside the run folder: ``sqlite:///<runs_root>/mlflow.db`` for a run made under
    --runs-root (an absolute path: the same store whatever the current folder)."""
    return f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"


def tracking_uri(s: Session) -> str:
    """``--mlflow-uri`` as MLflow takes it: a plain folder becomes a ``file:`` URI; default :func:`default_uri`."""
    uri = s.cfg.train.mlflow_uri or default_uri(s.run_dir)
    if SCHEME.match(uri) or uri == "databricks":
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI (relative to the current folder unless absolute:
    ``sqlite:////abs/path``); None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


def open_store(uri: str) -> None:
    """Make sure a SQLite store exists whole before MLflow's client opens it (other stores: nothing to do).

    The first process builds a new database in a temp file beside it, under an OS lock, and renames it into
    place; the others wait for the lock, then find the whole file. A kill during the build leaves only the temp
    file. An existing database is opened as it is (MLflow refuses one of an older schema, saying how to upgrade).
    """
    db = sqlite_file(uri)
    if db is None or db.exists():
        return
    missing = [p for p in ("sqlalchemy", "alembic") if importlib.util.find_spec(p) is None]
    if missing:  # mlflow-skinny alone: it logs to servers and file stores only
        raise ImportError(f"the SQLite store {uri} needs {' and '.join(missing)}: pip install 'dogcat-vision[mlflow]' "
                          "(or pass --mlflow-uri=FOLDER for a file store)")
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(db.parent / f".{db.name}.lock").acquire(blocking=True)
    try:
        if db.exists():  # another process made it while we waited
            return
        fd, tmp = temp_file(db.parent, db.name)
        os.close(fd)
        try:
            MlflowClient(tracking_uri=f"sqlite:///{tmp.resolve()}").search_experiments(max_results=1)  # creates it
            os.replace(tmp, db)
            fsync_dir(db.parent)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        lock.release(remove=True)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its runs' files: ``mlartifacts/`` beside the database (MLflow
    would pick ``./mlruns`` of the current folder); None lets the store decide (servers, file stores)."""
    db = sqlite_file(uri)
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None
def quiet_mlflow() -> None:
    """Before MLflow is imported in our process: no usage telemetry sent to MLflow's servers and no "View run at
    URL" line on stdout (results only go there, and the URL may hold credentials), unless the user set these."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def check_server(cfg: Config) -> None:
    """An http(s) ``--mlflow-uri`` must answer within :data:`CHECK_S` seconds, before a run folder exists: MLflow's
    own retries would delay the start by minutes and then switch the tracker off. No answer is one line, exit 1
    (:class:`~dogcat.tracking.loggers.Unreachable`); any HTTP answer (even an error status) is a server there."""
    uri = cfg.train.mlflow_uri
    if not uri or not uri.lower().startswith(("http://", "https://")):
        return
    import requests  # MLflow's own HTTP client, installed with it: the same proxies and credentials

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=(CHECK_S, CHECK_S), allow_redirects=False)
    except requests.RequestException as e:
        why = "no answer" if isinstance(e, requests.Timeout) else type(e).__name__
        raise Unreachable(f"--mlflow-uri={redact(uri)}: the MLflow server did not answer within {CHECK_S:g}s ({why}); "
                          "start it, or choose another --mlflow-uri or --logger") from None


class MlflowBackend(Backend):
    name = "mlflow"

    def __init__(self, s: Session) -> None:
        self.uri = tracking_uri(s)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module's doc
        quiet_mlflow()
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        open_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_dir = s.run_dir
        # trackers.json keeps the store's URI masked (console.redact): a resume compares the masked forms
        run_id = s.saved.get("run_id") if s.saved.get("uri") == redact(self.uri) else None
        if s.saved.get("run_id") and run_id is None:  # --mlflow-uri is a local option: not read from the run
            log.info(f"MLflow: this run was logged to {s.saved.get('uri')}; pass --mlflow-uri with that to continue "
                     f"its MLflow run there. A new MLflow run starts in {redact(self.uri)}")
        if run_id and self._exists(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            logged = self.client.get_run(run_id).data.params
        else:
            exp_id = self._experiment(s.cfg.train.mlflow_experiment)
            # the run folder as <runs root>/<name>: a tracking server learns no absolute path of this machine
            where = f"{s.run_dir.resolve().parent.name}/{s.run_dir.name}"
            run = self.client.create_run(exp_id, run_name=s.run_dir.name,
                                         tags={"dogcat.run_dir": where, "dogcat.status": "running"})
            self.run_id, logged = run.info.run_id, {}
        # MLflow refuses to change a logged param: on resume only new options are added (metrics.jsonl's resume
        # event records what changed)
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in s.params.items() if k not in logged]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("dogcat.status", "running")])

    def _experiment(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (by another process at the same time: its)."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri))
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        tags = scalar_tags(record)
        if not tags:
            return
        ms = int(1000 * float(record.get("time", time.time())))
        step = int(record.get(STEP, 0))
        metrics = [Metric(k, v, ms, step) for k, v in tags.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def finish(self, end: Ending) -> None:
        from mlflow.entities import Metric, RunTag

        ms = int(1000 * time.time())
        final = [Metric(k.replace("hparam/", "final/"), v, ms, end.step) for k, v in end.metrics.items()]
        self.client.log_batch(self.run_id, metrics=final, tags=[RunTag("dogcat.status", end.status)])
        for path in end.artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(end.status, "FAILED"))

    def saved(self) -> dict[str, Any]:
        return {"uri": redact(self.uri), "run_id": self.run_id}


@register_logger("mlflow", package="mlflow", extra="mlflow", check=check_server)
def open_mlflow(s: Session) -> Backend:
    return MlflowBackend(s)
