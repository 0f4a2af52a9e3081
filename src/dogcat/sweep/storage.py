"""Where a sweep's study lives: an Optuna storage from a URL, a journal file, or the default SQLite file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import ConfigError
from ..console import redact

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
        return optuna.storages.RDBStorage(url, **kw), redact(url)
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a refused connection: one line
        raise ConfigError(f"--storage={redact(url)}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def open_for_reading(folder: Path, url: str | None, given: bool) -> tuple[Any, str]:
    """``(Optuna storage, how to name it)`` for ``dogcat sweep show``, which creates and changes nothing: a SQLite
    file is opened read-only (``mode=ro``), a journal file is read from a private copy (Optuna's journal reader
    takes a lock file beside it), a server's database without creating tables. ``url`` from the sweep's own
    record (``given`` False: a folder from elsewhere names it) must be a file inside ``folder``; a server, or a
    file elsewhere, must be given on the command line (``--storage``)."""
    optuna = _optuna()
    if url is None:
        path: Path | None = folder / DEFAULT_STORAGE
    elif "://" not in url:
        path = Path(url).expanduser()
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):].split("?", 1)[0])
    else:
        path = None
    if not given and (path is None or not _inside(path, folder)):
        raise ConfigError(f"{folder / INFO} names the study's storage {redact(str(url))}, which is not a file in "
                          f"{folder}: dogcat opens only what the command line names there; pass --storage=URL")
    if path is None:  # a server's database, named on the command line
        try:
            return optuna.storages.RDBStorage(url, skip_table_creation=True), redact(str(url))
        except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a refused connection: one line
            raise ConfigError(f"--storage={redact(str(url))}: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}") from None
    if not path.is_file():
        raise ConfigError(f"no study at {path} (`dogcat sweep show` creates none); pass --storage=URL")
    if url is None or "://" in url:  # SQLite, read-only: no table, no journal, no lock is made
        ro = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
        try:
            return optuna.storages.RDBStorage(ro, skip_table_creation=True, skip_compatibility_check=True), str(path)
        except Exception as e:  # noqa: BLE001 - not a database, damaged: one line
            raise ConfigError(f"{path} is not a readable study database ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    from optuna.storages.journal import JournalFileBackend

    tmp = tempfile.TemporaryDirectory(prefix="dogcat-sweep-show-")
    copy = Path(tmp.name) / path.name
    shutil.copyfile(path, copy)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(copy)))
    storage._dogcat_copy = tmp  # type: ignore[attr-defined]  # removed with the storage
    return storage, str(path)
