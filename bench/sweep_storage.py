"""Which Optuna storage is safer for several sweep processes on one machine: SQLite or a journal file?

For each storage, P processes work on one study at once, each running T trials that report R intermediate
values (what a sweep's epochs do), with no pause between calls (far more contention than real trials, which
spend minutes training between writes). Then the same again while one process is killed with SIGKILL in the
middle of its writes. Printed per storage: wall time, storage errors the workers saw (each one would have
ended a sweep process), trials recorded, and whether the study still opens. Needs optuna
(pip install 'dogcat-vision[sweep]'). Usage: python bench/sweep_storage.py [PROCESSES] [TRIALS] [REPORTS] [NICE] [ROUNDS]; every figure is
printed per round, then as mean ± std over the rounds (3 by default)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _figures import mean_std


def storage(kind: str, folder: Path):  # noqa: ANN201
    import optuna

    if kind == "sqlite":  # SQLite's own busy timeout: 5 s
        return f"sqlite:///{folder / 'study.db'}"
    if kind == "sqlite60":  # what dogcat sweep opens: a write waits up to 60 s for another process's
        return optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}",
                                          engine_kwargs={"connect_args": {"timeout": 60}})
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))


def worker(kind: str, folder: str, trials: int, reports: int, errors: mp.Queue, busy: Any, nice: int) -> None:
    import optuna

    os.nice(nice)  # > 0: the workers get what CPU a busy machine leaves them (lock holders descheduled)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=storage(kind, Path(folder)))
    n_err = 0
    for i in range(trials):
        if i == trials // 3:
            busy.set()  # a third done: the parent may kill this process, in the middle of its next writes
        try:
            trial = study.ask()
            x = trial.suggest_float("x", 1e-4, 1.0, log=True)
            for step in range(reports):
                trial.report(x * (step + 1), step)
            study.tell(trial, x)
        except Exception as e:  # noqa: BLE001 - counted: each would have stopped a sweep process
            n_err += 1
            errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    errors.put(n_err)


def run(kind: str, processes: int, trials: int, reports: int, kill: bool, nice: int = 0) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        optuna.create_study(study_name="bench", storage=storage(kind, Path(tmp)))
        ctx = mp.get_context("spawn")
        errors = ctx.Queue()
        busy = [ctx.Event() for _ in range(processes)]
        procs = [ctx.Process(target=worker, args=(kind, tmp, trials, reports, errors, b, nice)) for b in busy]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        if kill:
            busy[0].wait()
            time.sleep(0.05)
            os.kill(procs[0].pid, signal.SIGKILL)
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        msgs, n_err = [], 0
        while not errors.empty():
            m = errors.get()
            if isinstance(m, int):
                n_err += m
            else:
                msgs.append(m)
        try:
            study = optuna.load_study(study_name="bench", storage=storage(kind, Path(tmp)))
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            opens = "yes"
        except Exception as e:  # noqa: BLE001
            states, opens = [], f"no: {type(e).__name__}"
        return {"wall": wall, "errors": n_err, "first_error": msgs[0] if msgs else "",
                "complete": states.count("COMPLETE"), "running": states.count("RUNNING"), "opens": opens}


def main() -> None:
    processes, trials, reports, nice, repeats = (
        int(a) for a in (sys.argv[1:] + ["8", "40", "10", "0", "3"][len(sys.argv) - 1:])[:5])
    print(f"{processes} processes x {trials} trials x {reports} reports each, one study, workers at nice {nice}; "
          f"{repeats} rounds, each running every storage in turn")
    print(f"{'storage':<8} {'kill -9':<8} {'wall s':>7} {'errors':>7} {'complete':>9} {'running':>8} {'opens':>6}  "
          "first error")
    cells = [(kill, kind) for kill in (False, True) for kind in ("sqlite", "sqlite60", "journal")]
    results: dict[tuple[bool, str], list[dict]] = {c: [] for c in cells}
    for _ in range(repeats):  # rounds alternate the storages, so that a neighbour's burst hits each alike
        for kill, kind in cells:
            r = run(kind, processes, trials, reports, kill, nice)
            results[kill, kind].append(r)
            print(f"{kind:<8} {'yes' if kill else 'no':<8} {r['wall']:>7.1f} {r['errors']:>7} {r['complete']:>9} "
                  f"{r['running']:>8} {r['opens']:>6}  {r['first_error']}", flush=True)
    print(f"\nmean ± std over {repeats} rounds:")
    for (kill, kind), rs in results.items():
        col = {k: [float(r[k]) for r in rs] for k in ("wall", "errors", "complete", "running")}
        opens = sum(r["opens"] == "yes" for r in rs)
        print(f"{kind:<8} kill -9 {'yes' if kill else 'no':<4} wall {mean_std(col['wall'], '{:.0f}')} s, errors "
              f"{mean_std(col['errors'], '{:.1f}')} ({sum(col['errors']):.0f} in all), complete "
              f"{mean_std(col['complete'], '{:.1f}')}, left running {mean_std(col['running'], '{:.1f}')}, "
              f"study opens {opens} of {len(rs)}", flush=True)


if __name__ == "__main__":
    main()
