"""Issue 21 items 2, 5 and 10: a sweep space cannot choose places; `sweep show` of a folder from elsewhere creates
and changes no database and opens only what the command line names outside it; a crafted study's trial attributes
choose no folder; a damaged sweep.json is one line; a full disk fails the trial and ends the sweep (exit 1)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from datagen import make_fmnist_idx  # noqa: E402

from dogcat.cli import main  # noqa: E402
from dogcat.config import ConfigError  # noqa: E402
from dogcat.sweep.space import read_space  # noqa: E402

from hostile import one_error  # noqa: E402
from test_sweep import space_file as sweep_space  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space_file(folder: Path, data: Path, search: dict, **train: object) -> Path:
    """test_sweep's space file, one epoch a trial unless said."""
    return sweep_space(folder, data, search, **{"max_epoch": 1, **train})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fmnist_idx(tmp_path_factory.mktemp("fm") / "fm", n_train=80, n_test=8)


# ---- item 2: a search block names no place -----------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("cache_dir", "/tmp/elsewhere"), ("mlflow_uri", "http://attacker:5000"),
                                        ("result_file", "/tmp/x.csv"), ("output", "/tmp/out.csv")])
def test_search_cannot_set_a_place(key, value, data, tmp_path, capsys):
    path = space_file(tmp_path, data, {key: {"choice": [value]}, "lr": {"choice": [0.01, 0.003]}})
    with pytest.raises(ConfigError, match="place"):
        read_space(path)
    assert main(["sweep", str(path), f"--runs-root={tmp_path / 'runs'}"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "--" + key.replace("_", "-") in line and "command line" in line
    assert not (tmp_path / "runs").exists()


# ---- item 5: sweep show opens read-only, only inside the folder unless named ------------------------------

def make_sweep(folder: Path, storage: str | None = None, name: str = "s", trials: int = 3,
               attrs: dict | None = None) -> optuna.Study:
    """A finished little study and its sweep.json, as `dogcat sweep` leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{folder / 'study.db'}"
    backend = url
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        backend = optuna.storages.JournalStorage(JournalFileBackend(url))
    study = optuna.create_study(study_name=name, storage=backend, direction="maximize")
    for i in range(trials):
        t = study.ask()
        t.suggest_float("lr", 1e-3, 1e-1, log=True)
        for k, v in (attrs or {}).items():
            t.set_user_attr(k, v)
        study.tell(t, 0.5 + i / 10)
    (folder / "sweep.json").write_text(json.dumps({"name": name, "storage": storage, "monitor": "val_accuracy"}))
    return study


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_show_changes_no_database_and_makes_none(tmp_path, capsys):
    folder = tmp_path / "runs" / "s"
    make_sweep(folder)
    before = digest(folder / "study.db")
    assert main(["sweep", "show", str(folder)]) == 0
    assert "trial" in capsys.readouterr().out
    assert digest(folder / "study.db") == before
    assert sorted(p.name for p in folder.iterdir()) == ["history.png", "parallel.png", "study.db", "sweep.json"]
    # a database named on the command line that is not there is not created
    missing = tmp_path / "nope.db"
    assert main(["sweep", "show", str(folder), f"--storage=sqlite:///{missing}"]) == 2
    assert "no study at" in one_error(capsys.readouterr().err) and not missing.exists()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_show_refuses_a_storage_outside_the_folder_unless_given(kind, tmp_path, capsys):
    folder = tmp_path / "runs" / "s"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{elsewhere / 'other.db'}" if kind == "sqlite" else str(elsewhere / "other.journal")
    make_sweep(folder, storage=url)
    before = sorted(os.listdir(elsewhere)), digest(elsewhere / os.listdir(elsewhere)[0])
    assert main(["sweep", "show", str(folder)]) == 2
    assert "--storage" in one_error(capsys.readouterr().err)
    assert main(["sweep", "show", str(folder), f"--storage={url}"]) == 0  # named on the command line: read
    assert "best: trial 2" in capsys.readouterr().out
    assert (sorted(os.listdir(elsewhere)), digest(elsewhere / os.listdir(elsewhere)[0])) == before  # no lock file
    # a record naming a database that is not there makes none either
    info = json.loads((folder / "sweep.json").read_text())
    (folder / "sweep.json").write_text(json.dumps({**info, "storage": f"sqlite:///{tmp_path / 'planted.db'}"}))
    assert main(["sweep", "show", str(folder)]) == 2
    one_error(capsys.readouterr().err)
    assert not (tmp_path / "planted.db").exists()


@pytest.mark.parametrize("record", ['{"storage": null}', '{"name": 5}', '{"name": "s", "storage": 7}',
                                    '{"name": "../up"}', '{"name": "s", "monitor": {"a": 1}}'])
def test_a_damaged_sweep_record_is_one_line(record, tmp_path, capsys):
    folder = tmp_path / "runs" / "s"
    make_sweep(folder)
    (folder / "sweep.json").write_text(record)
    assert main(["sweep", "show", str(folder)]) == 2
    assert "sweep.json" in one_error(capsys.readouterr().err)


def test_a_damaged_trial_config_still_shows_the_table(tmp_path, capsys):
    folder = tmp_path / "runs" / "s"
    make_sweep(folder)
    (folder / "trial-0002").mkdir()
    (folder / "trial-0002" / "config.yaml").write_text("train: [unclosed\n")
    assert main(["sweep", "show", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "best: trial 2" in captured.out and "Traceback" not in captured.err
    assert "config.yaml" in captured.err and not (folder / "best.yaml").exists()


def test_trial_attributes_choose_no_folder(tmp_path, capsys):
    """A crafted study: a dead RUNNING trial and the best trial name a victim run folder in `run_dir`. Reaping
    marks only the sweep's own trial-NNNN failed; best.yaml comes from trial-NNNN, never from the named folder."""
    from dogcat.sweep.study import reap

    victim = tmp_path / "victim-run"
    victim.mkdir()
    (victim / "config.yaml").write_text("optim: {lr: 0.123}\n")
    (victim / "status").write_text("running\n")
    folder = tmp_path / "runs" / "s"
    study = make_sweep(folder, attrs={"run_dir": str(victim), "note": ["not", "text"]})  # shown as text
    dead = study.ask()
    for k, v in {"pid": 2**22 + 12345, "host": os.uname().nodename, "start": 1, "run_dir": str(victim)}.items():
        dead.set_user_attr(k, v)
    assert reap(study, folder) == [dead.number]
    assert (victim / "status").read_text() == "running\n" and sorted(os.listdir(victim)) == ["config.yaml", "status"]
    assert main(["sweep", "show", str(folder)]) == 0
    capsys.readouterr()
    assert not (folder / "best.yaml").exists() or "0.123" not in (folder / "best.yaml").read_text()


# ---- item 10: a full disk fails the trial and ends the sweep -----------------------------------------------

def test_full_disk_fails_the_trial_and_exits_1(data, tmp_path, monkeypatch, capsys):
    import dogcat.engine.trainer as trainer
    from dogcat.io import DiskFull
    from dogcat.sweep import study as S

    def full(cfg, on_epoch=None):
        raise DiskFull(tmp_path, 1 << 20, 0, "saving checkpoint last.pt")

    def no_waiting(seconds):
        raise AssertionError("the sweep waits for a trial that will never end")

    monkeypatch.setattr(trainer, "train", full)
    monkeypatch.setattr(S.time, "sleep", no_waiting)
    path = space_file(tmp_path, data, {"lr": {"choice": [0.01, 0.003]}})
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), f"--runs-root={runs}", "--trials=2"]) == 1
    assert "disk full" in one_error(capsys.readouterr().err)
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{runs / 'space' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] and "disk full" in study.trials[0].user_attrs["fail_reason"]

    # the disk is full for the study too: the trial stays RUNNING there; the next sweep fails it, never waits on it
    real_tell = optuna.Study.tell

    def tell_fails(self, trial, *a, **kw):
        raise optuna.exceptions.StorageInternalError("database or disk is full")

    monkeypatch.setattr(optuna.Study, "tell", tell_fails)
    assert main(["sweep", str(path), f"--runs-root={runs}", "--trials=2"]) == 1
    one_error(capsys.readouterr().err)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING"]
    monkeypatch.setattr(optuna.Study, "tell", real_tell)
    monkeypatch.setattr(trainer, "train", lambda cfg, on_epoch=None: (_ for _ in ()).throw(ValueError("boom")))
    assert main(["sweep", str(path), f"--runs-root={runs}", "--trials=1"]) == 0  # 5 failed trials in a row: stops
    states = [t.state.name for t in study.get_trials()]
    assert states[:2] == ["FAIL", "FAIL"] and "RUNNING" not in states
