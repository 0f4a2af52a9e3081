"""Where a sweep's study lives: an Optuna storage from a URL, a journal file, or the default SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import ConfigError

DEFAULT_STORAGE = "study.db"
INFO = "sweep.json"              # the sweep's record in its folder: name, storage, monitor, pruner
HEARTBEAT_S, GRACE_S = 60, 180   # database servers: a trial silent for GRACE_S is failed by any process
# SQLite: how long a write waits for another process's (bench/sweep_storage.py: with SQLite's default 5 s,
# processes starved of CPU got "database is locked" errors, each of which would end a sweep process)
SQLITE_WAIT_S = 60


def trial_dir(number: int) -> str:
    return f"trial-{number:04d}"


def _optuna() -> Any:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat API is marked experimental, and meant for study.optimize; dogcat beats itself (study.py)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def masked(url: str) -> str:
    """A storage URL without its password (for files and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(folder: Path, url: str | None) -> tuple[Any, str]:
    """``(Optuna storage, how to name it)``: a database URL (``sqlite:///``, ``postgresql://``, ``mysql://``),
    a journal file (a path without ``://``), or by default the SQLite file ``folder/study.db``."""
    optuna = _optuna()
    if url is None:
        url = f"sqlite:///{folder.resolve() / DEFAULT_STORAGE}"
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url).expanduser()))), url
    # a server's database: heartbeats let any process fail a trial whose process stopped beating, on any
    # machine; a SQLite file is one machine's, where the process itself is looked up (study.reap)
    if url.startswith("sqlite"):  # wait up to a minute for another process's write (SQLite's default: 5 s)
        kw: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": SQLITE_WAIT_S}}}
    else:
        kw = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    try:
        return optuna.storages.RDBStorage(url, **kw), masked(url)
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a refused connection: one line
        raise ConfigError(f"--storage={masked(url)}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
