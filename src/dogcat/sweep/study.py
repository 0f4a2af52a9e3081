"""``sweep(space, trials=N)``: Optuna trials, each an ordinary training run in ``RUNS/NAME/trial-NNNN/``.

The study lives in a database (default: the SQLite file ``RUNS/NAME/study.db``; docs/sweeps.md says why), so
any number of sweep processes, here or on other machines, work on one study; each trial's folder is named by
its Optuna trial number, which the database hands out once. Trials are taken with ask/tell under a lock
(``RUNS/NAME/sweep.lock``), so processes on one machine stop at exactly N finished-or-pruned trials between
them. A trial whose process died (``kill -9``, a power cut) stays RUNNING in the database: the next sweep
process here sees its process gone (pid, host and start time, recorded when it was taken) and marks it FAIL;
on other machines Optuna's heartbeat does the same (database servers such as PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..config import RUN_NAME, ConfigError, DogcatError
from ..control import TrainingStopped
from ..io import DiskFull, MalformedFile, atomic_write_text, check_dir, free_bytes, is_disk_full, one_line
from ..locks import FileLock, process_alive, this_process
from ..metrics import metric
from ..tracking.manifest import read_manifest, write_manifest
from ..tracking.records import EPOCH, event_record
from ..tracking.run import Run, RunLocked
from .space import PRUNERS, Space, check_names, read_space
from .storage import INFO, _optuna, open_storage, trial_dir

log = logging.getLogger("dogcat")

LOCK = "sweep.lock"
UNCLAIMED_S = 120                # a trial asked for but never claimed (its process died at once)
POLL_S = 2.0                     # waiting for other processes' last trials
MAX_FAILS_IN_ROW = 5


@dataclass
class Outcome:
    """What one ``sweep`` call did, and where the study stands."""

    folder: Path
    ran: int                 # trials this process ran
    done: int                # finished-or-pruned trials in the study
    best_number: int | None
    best_value: float | None


def sweep(space_file: str | Path, trials: int = 20, timeout: float | None = None, name: str | None = None,
          storage: str | None = None, pruner: str = "median", seed: int = 0,
          overrides: dict[str, Any] | None = None) -> Outcome:
    """Run trials of the study ``name`` until it holds ``trials`` finished-or-pruned ones (counting those of
    earlier calls and of other processes), or ``timeout`` seconds have passed (no trial starts after that).
    ``overrides``: options for every trial (``runs_root`` among them)."""
    _check_args(trials, timeout, pruner, seed)
    space = read_space(space_file, overrides)
    name = name or Path(space_file).stem
    if not RUN_NAME.fullmatch(name):
        raise ConfigError(f"--name={name!r} is not a plain name (letters, digits, '.', '_', '-', '+')")
    check_names(space)
    folder = Path(space.base.train.runs_root).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / LOCK):
        study, where = _open_study(folder, name, storage, space, pruner, trials)
    log.info(f"sweep {name}: study in {where}; trials in {folder}/trial-NNNN; objective "
             f"{space.base.train.monitor} ({study.direction.name.lower()})")
    deadline = time.monotonic() + timeout if timeout else None
    ran = fails = 0
    while fails < MAX_FAILS_IN_ROW:
        with FileLock(folder / LOCK):
            reap(study, folder)
            done, active = _counts(study)
            if done >= trials or (deadline is not None and time.monotonic() >= deadline):
                break
            trial = _ask(study, seed, trials) if done + active < trials else None
        if trial is None:  # the last trials are other processes': wait, in case one of them fails
            time.sleep(POLL_S)
            continue
        ran += 1
        state = run_trial(study, trial, space, folder)
        fails = fails + 1 if state == "FAIL" else 0
    if fails >= MAX_FAILS_IN_ROW:
        log.warning(f"{fails} trials in a row failed: stopping (their reasons: `dogcat sweep show {folder}`)")
    from .results import write_best

    best = write_best(study, folder)
    done, _ = _counts(study)
    log.info(f"sweep {name}: {done}/{trials} trials finished or pruned ({ran} here)"
             + (f"; best trial {best[0]}: {space.base.train.monitor} {best[1]:.4f}, recipe {folder / 'best.yaml'}"
                if best else ""))
    return Outcome(folder, ran, done, *(best or (None, None)))


def _check_args(trials: int, timeout: float | None, pruner: str, seed: int) -> None:
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials expects a whole number >= 1, got {trials!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout expects seconds > 0, got {timeout!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner={pruner!r} is not one of: {', '.join(PRUNERS)}")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed expects an integer in [0, 2^32), got {seed!r}")


def _open_study(folder: Path, name: str, url: str | None, space: Space, pruner: str, trials: int) -> tuple[Any, str]:
    optuna = _optuna()
    storage, where = open_storage(folder, url)
    monitor = space.base.train.monitor
    direction = "maximize" if metric(monitor).higher_is_better else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                pruner=make_pruner(pruner, space))
    key = {"search": [p.describe() for p in space.params], "monitor": monitor}
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", key)
    elif recorded != key:
        raise ConfigError(f"study {name!r} in {where} searches {recorded} and this space {key}: one study, one "
                          "search; pass another --name for a new sweep")
    atomic_write_text(folder / INFO, json.dumps(
        {"name": name, "storage": where if url else None, "space": str(space.path), "monitor": monitor,
         "direction": direction, "pruner": pruner, "trials": trials}, indent=1) + "\n")
    return study, where


def make_pruner(name: str, space: Space) -> Any:
    """median: from the third trial on and from epoch 2, a trial worse than the median of the earlier trials at
    the same epoch stops; hyperband: successive halving over epochs, 1 .. the largest max_epoch searched."""
    optuna = _optuna()
    if name == "median":
        # epochs are reported as steps 1, 2, ...; Optuna prunes from step n_warmup_steps on: from epoch 2
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "hyperband":
        top = max([int(v) for p in space.params if p.name == "max_epoch" for v in p.values]
                  or [space.base.train.max_epoch])
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(top, 2), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _counts(study: Any) -> tuple[int, int]:
    """``(finished or pruned, running)`` trials of the study (an enqueued, WAITING one is the next ask's)."""
    from optuna.trial import TrialState as S

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return sum(s in (S.COMPLETE, S.PRUNED) for s in states), sum(s == S.RUNNING for s in states)


def _ask(study: Any, seed: int, trials: int) -> Any:
    """A new trial, its sampler seeded by (seed, trial number): reproducible alone, different across processes;
    it is claimed at once (pid, host, start time) so that a process that dies can be told from a slow one."""
    optuna = _optuna()
    number = len(study.get_trials(deepcopy=False))  # under the lock: the number ask() will give, locally
    study.sampler = optuna.samplers.TPESampler(seed=(seed * 1_000_003 + number) % 2**32,
                                               n_startup_trials=min(10, max(3, trials // 3)))
    trial = study.ask()
    me = this_process()
    for k in ("pid", "host", "start"):
        trial.set_user_attr(k, me[k])
    return trial


def reap(study: Any, folder: Path | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose process is gone; returns their numbers. On this host the process is
    looked up (pid + start time); elsewhere Optuna's heartbeat decides (database storages). With ``folder`` (the
    sweep's), a failed trial's run folder there (``trial-NNNN``) says failed too."""
    optuna = _optuna()
    from optuna.trial import TrialState as S

    if hasattr(study._storage, "get_heartbeat_interval") and study._storage.get_heartbeat_interval():
        optuna.storages.fail_stale_trials(study)
    reaped = []
    me = this_process()
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        a = t.user_attrs
        why = (f"its sweep process (pid {a.get('pid', '?')} on {a.get('host', '?')}) ended without finishing it "
               "(killed?)")
        if all(a.get(k) == me[k] for k in ("pid", "host", "start")):
            # ours, and this process runs no trial while it reaps: one whose end could not be recorded (a full
            # disk, a database error) must not count as running for ever
            alive, why = False, "this sweep process ran it but could not record how it ended"
        elif "pid" in a:
            alive = process_alive(a["pid"], a.get("start"), a.get("host"))
        else:
            alive = time.time() - t.datetime_start.timestamp() < UNCLAIMED_S if t.datetime_start else True
        if alive is False:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", why)
            study.tell(t.number, state=S.FAIL)
            if folder is not None:  # the trial's folder by its number, here: never a path the study names
                _mark_run_failed(folder / trial_dir(t.number), why)
            log.warning(f"trial {t.number} marked failed: {why}")
            reaped.append(t.number)
    return reaped


def _mark_run_failed(path: Path, why: str) -> None:
    """The dead trial's run folder says failed too (status, manifest, an event), unless a process holds it."""
    run = Run(path)
    if not run.folder.is_run():
        return
    try:
        run.lock()
    except DogcatError as e:  # held by a live process, or a link planted in it: left as it is
        if not isinstance(e, RunLocked):
            log.warning(f"not marking {path} failed: {one_line(e)}")
        return
    try:
        try:
            status = run.status()
        except MalformedFile as e:  # the trial is failed in the study all the same; its folder stays as it is
            log.warning(f"{e}; not marking the run failed")
            return
        if status == "running":
            run.set_status("failed")
            run.log(event_record("sweep", status="failed", reason=why))
            try:
                m = read_manifest(path)
            except MalformedFile as e:  # the status says failed; a damaged record stays as it is
                log.warning(f"{e}; not updated")
                m = {}
            if m:
                m.update(status="failed", exit={"status": "failed", "code": None, "error": why})
                write_manifest(path, m)
    finally:
        run.unlock()


class Reporter:
    """The trainer's ``on_epoch``: reports the monitor to the trial, and returns why when the pruner says stop."""

    def __init__(self, study: Any, trial: Any, monitor: str) -> None:
        self.study, self.trial, self.monitor = study, trial, monitor

    def __call__(self, record: dict[str, Any]) -> str | None:
        value, epoch = record.get(self.monitor), int(record[EPOCH])
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        self.trial.report(float(value), epoch)
        if not self.trial.should_prune():
            return None
        why = f"{self.monitor} {value:.4f} at epoch {epoch}"
        from optuna.trial import TrialState as S

        earlier = [t.intermediate_values[epoch] for t in self.study.get_trials(deepcopy=False, states=(S.COMPLETE,))
                   if epoch in t.intermediate_values]  # what the median pruner compares with
        kind = type(self.study.pruner).__name__.replace("Pruner", "").lower()
        if kind == "median" and earlier:
            why += f" is worse than the median {statistics.median(earlier):.4f} of {len(earlier)} finished trials"
        return f"pruned by the {kind} pruner: {why}"


@contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Beat for the trial while it trains (database storages with a heartbeat interval)."""
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat is not a reason to stop training
                log.debug(f"heartbeat: {e}")
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(study: Any, trial: Any, space: Space, folder: Path) -> str:
    """Train one trial in ``folder/trial-NNNN`` and tell the study how it ended; returns the state's name.
    A trial that fails is recorded as FAIL with its reason; a signal or Ctrl-C fails it and ends the sweep."""
    from optuna.trial import TrialState as S

    values = {p.name: p.suggest(trial) for p in space.params}
    run_dir = folder / trial_dir(trial.number)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    log.info(f"trial {trial.number}: {shown} -> {run_dir}")
    monitor = space.base.train.monitor
    from ..engine.trainer import train  # here: `dogcat sweep show` reads a study without loading torch

    try:
        check_dir(run_dir, top=folder)  # ours to make: a link planted at the trial's name is refused (trial failed)
        cfg = space.config(values, run_dir=str(run_dir))
        with heartbeat(study, trial):
            result = train(cfg, on_epoch=Reporter(study, trial, monitor))
    except (KeyboardInterrupt, TrainingStopped) as e:
        _fail(study, trial, f"interrupted: {type(e).__name__} {e}".strip())
        raise
    except (DogcatError, Exception) as e:  # noqa: BLE001 - one failed trial does not end the sweep
        _fail(study, trial, f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
        if is_disk_full(e):  # every next trial would fail the same way: the sweep ends, exit 1
            raise e if isinstance(e, DiskFull) else DiskFull(run_dir, None, free_bytes(run_dir.parent),
                                                               f"trial {trial.number}") from e
        log.warning(f"trial {trial.number} failed: {type(e).__name__}: {e}")
        return "FAIL"
    if result.pruned:
        trial.set_user_attr("pruned_reason", result.pruned)
        _tell(study, trial, state=S.PRUNED)
        log.info(f"trial {trial.number} {result.pruned}")
        return "PRUNED"
    if result.best_metric is None or not math.isfinite(result.best_metric):
        _fail(study, trial, f"no finite {monitor} (epochs run: {len(result.history)})")
        return "FAIL"
    if result.stopped:
        trial.set_user_attr("note", "stopped early (dogcat ctl stop or --max-steps): its best epoch counts")
    if not _tell(study, trial, result.best_metric):
        return "FAIL"
    best = study.best_trial
    log.info(f"trial {trial.number} finished: {monitor} {result.best_metric:.4f} (epoch {result.best_epoch}); best "
             f"so far: trial {best.number}, {best.value:.4f}")
    return "COMPLETE"


def _tell(study: Any, trial: Any, *args: Any, **kw: Any) -> bool:
    """``study.tell``; False (with a warning) when the trial was already ended, e.g. failed by another process
    that found it silent for longer than the heartbeat's grace period (a suspended process)."""
    try:
        study.tell(trial, *args, **kw)
        return True
    except (RuntimeError, ValueError) as e:
        log.warning(f"trial {trial.number}: its result could not be recorded ({e})")
        return False


def _fail(study: Any, trial: Any, why: str) -> None:
    from optuna.trial import TrialState as S

    try:
        trial.set_user_attr("fail_reason", why)
        study.tell(trial, state=S.FAIL)
    except Exception as e:  # noqa: BLE001 - never hide the error that failed the trial
        log.warning(f"could not record trial {trial.number} as failed: {e}")
