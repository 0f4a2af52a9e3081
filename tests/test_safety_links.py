"""Issue 21 item 1: a run folder (or a sweep folder) from elsewhere with symbolic links planted where dogcat writes
or cleans up. A folder dogcat owns that is a link is refused in one line; a file it writes whole through a link is
replaced as a link (its target untouched); only names dogcat made are ever deleted, never what a link points to."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dogcat.cli import main
from dogcat.control import Inbox

from hostile import one_error

VICTIM_TEXT = "precious, not dogcat's\n"


@pytest.fixture
def run(tiny_run, tmp_path: Path) -> Path:
    """A copy of the session's tiny run (1 epoch, best.pt and last.pt) in which the test plants links."""
    return tiny_run.copy(tmp_path)


def victim_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of someone's files, laid out like the folders a planted link would send dogcat into."""
    victim = tmp_path / "victim"
    files = {"notes.txt": VICTIM_TEXT, "inbox/todo.json": '{"command": "stop"}', "inbox/other.txt": "x",
             "done/1-2.json": "{}", "top-0001-val_accuracy=0.5.pt": "not a checkpoint", "last.pt": "mine",
             "index.html": "<p>mine</p>", "loss.png": "mine"}
    for name, text in files.items():
        (victim / name).parent.mkdir(parents=True, exist_ok=True)
        (victim / name).write_text(text)
    return victim, files


def unchanged(victim: Path, files: dict[str, str]) -> None:
    now = {str(p.relative_to(victim)): p.read_text() for p in victim.rglob("*") if p.is_file()}
    assert now == files, now


def victim_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "victim.txt"
    f.write_text(VICTIM_TEXT)
    return f


@pytest.mark.parametrize("link", ["control", "control/inbox", "checkpoints"])
def test_resume_refuses_a_linked_folder_and_leaves_its_target(link, run, tmp_path, capsys):
    victim, files = victim_folder(tmp_path)
    (run / link).parent.mkdir(parents=True, exist_ok=True)
    if (run / link).exists():
        shutil.rmtree(run / link)
    target = victim if link != "control/inbox" else victim / "inbox"
    (run / link).symlink_to(target, target_is_directory=True)
    assert main(["train", f"--resume={run}", "--max-epoch=1"]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"{run / link} is a symbolic link" in line
    unchanged(victim, files)
    assert (run / "status").read_text().strip() == "finished"  # the run was not touched either


@pytest.mark.parametrize("name", ["metrics.jsonl", "bad_files.txt"])
def test_resume_refuses_a_linked_file_it_appends_to(name, run, tmp_path, capsys):
    victim = victim_file(tmp_path)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    assert main(["train", f"--resume={run}", "--max-epoch=2"]) == 2
    assert f"{run / name} is a symbolic link" in one_error(capsys.readouterr().err)
    assert victim.read_text() == VICTIM_TEXT


def test_report_refuses_a_linked_report_folder(run, tmp_path, capsys):
    victim, files = victim_folder(tmp_path)
    (run / "report").symlink_to(victim, target_is_directory=True)
    assert main(["report", str(run)]) == 2
    assert f"{run / 'report'} is a symbolic link" in one_error(capsys.readouterr().err)
    assert main(["val", str(run), "--report"]) == 2
    assert f"{run / 'report'} is a symbolic link" in one_error(capsys.readouterr().err)
    unchanged(victim, files)


def test_files_written_whole_replace_a_planted_link_never_its_target(run, tmp_path):
    """Pictures and pages of `report` (through the atomic helper now), and status, config.yaml, manifest.json
    (a resume), result.json (val): each link is replaced by our file, its target untouched."""
    (run / "report").mkdir()
    names = ["report/index.html", "report/loss.png", "report/accuracy.png", "report/confusion.png",
             "report/mistakes.png", "status", "config.yaml", "manifest.json", "result.json"]
    victims = {n: victim_file(tmp_path / n.replace(".", "_").replace("/", "_")) for n in names}
    for n in ("config.yaml", "manifest.json"):  # read before they are written: valid ones
        victims[n].write_text((run / n).read_text())
    before = {n: v.read_text() for n, v in victims.items()}
    for n, v in victims.items():
        (run / n).unlink(missing_ok=True)
        (run / n).symlink_to(v)
    assert main(["report", str(run)]) == 0
    assert main(["train", f"--resume={run}", "--max-epoch=1"]) == 0
    for n, v in victims.items():
        assert v.read_text() == before[n], n
    for n in ("report/index.html", "report/loss.png", "report/confusion.png", "status", "config.yaml",
              "manifest.json", "result.json"):  # always written (mistakes: only when there are some)
        assert not (run / n).is_symlink() and (run / n).is_file(), n
    assert (run / "report" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_inbox_deletes_only_its_own_entries(tmp_path, caplog):
    """A link named like a command is removed itself; a folder with files is answered and left; a file that
    is not a command file's name is left alone; a linked control/ or inbox/ is refused."""
    victim, files = victim_folder(tmp_path)
    control = tmp_path / "run" / "control"
    inbox = control / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "a.json").symlink_to(victim / "notes.txt")
    (inbox / "b.json").symlink_to(victim, target_is_directory=True)
    (inbox / "c.json").mkdir()
    (inbox / "c.json" / "keep.txt").write_text("keep")
    (inbox / "readme.txt").write_text("keep me")
    box = Inbox(control, min_interval=0)
    try:
        assert box.poll() == []
        left = sorted(p.name for p in inbox.iterdir())
        assert left == ["c.json", "readme.txt"] and (inbox / "c.json" / "keep.txt").read_text() == "keep"
        answers = {p.name: json.loads(p.read_text()) for p in (control / "done").iterdir()}
        assert set(answers) == {"a.json", "b.json", "c.json"} and not any(a["ok"] for a in answers.values())
        box.poll()  # answered once: not again and again
        assert len(list((control / "done").iterdir())) == 3
    finally:
        box.close()
    unchanged(victim, files)
    for i, planted in enumerate(("control", "control/inbox", "control/done")):
        ctl = tmp_path / f"run-{i}" / "control"
        (tmp_path / f"run-{i}" / planted).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"run-{i}" / planted).symlink_to(victim, target_is_directory=True)
        with pytest.raises(Exception, match="is a symbolic link"):  # io.UnsafePath
            Inbox(ctl)
    unchanged(victim, files)


def test_ctl_does_not_send_through_a_linked_inbox(run, tmp_path, capsys):
    victim, files = victim_folder(tmp_path)
    (run / "control").mkdir(exist_ok=True)
    shutil.rmtree(run / "control")
    (run / "control").symlink_to(victim, target_is_directory=True)
    (victim / "pid").write_text(json.dumps({"pid": os.getpid(), "start": None, "host": None}))
    files["pid"] = (victim / "pid").read_text()
    assert main(["ctl", str(run), "save", "--timeout=1"]) == 2
    assert "is a symbolic link" in one_error(capsys.readouterr().err)
    unchanged(victim, files)


def test_sweep_show_replaces_linked_plots(tmp_path):
    optuna = pytest.importorskip("optuna")
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for i in range(4):
        t = study.ask()
        t.suggest_float("lr", 1e-3, 1e-1, log=True)
        study.tell(t, 0.5 + i / 10)
    (folder / "sweep.json").write_text(json.dumps({"name": "s", "storage": None, "monitor": "val_accuracy"}))
    victims = {n: victim_file(tmp_path / n) for n in ("history.png", "parallel.png", "best.yaml")}
    for n, v in victims.items():
        (folder / n).symlink_to(v)
    assert main(["sweep", "show", str(folder)]) == 0
    for n, v in victims.items():
        assert v.read_text() == VICTIM_TEXT, n
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG" and not (folder / "history.png").is_symlink()


def test_lr_find_plot_replaces_a_link(tmp_path, tiny):
    from datagen import make_folder

    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=4)
    out = tmp_path / "out"
    out.mkdir()
    victims = {n: victim_file(tmp_path / n) for n in ("lr_find.png", "lr_find.json")}
    for n, v in victims.items():
        (out / n).symlink_to(v)
    opts = tiny(data, tmp_path / "runs")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not None]
    main(["lr-find", *args, f"--output={out}", "--steps=4"])
    for n, v in victims.items():
        assert v.read_text() == VICTIM_TEXT, n
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_a_planted_trial_folder_link_fails_that_trial_only(tmp_path):
    """A sweep's trial folder is the sweep's to make: a link planted at trial-0000 fails the trial, untouched."""
    pytest.importorskip("optuna")
    from dogcat.sweep.study import run_trial

    victim, files = victim_folder(tmp_path)
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    (folder / "trial-0000").symlink_to(victim, target_is_directory=True)
    import optuna

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    from types import SimpleNamespace

    space = SimpleNamespace(params=[], base=SimpleNamespace(train=SimpleNamespace(monitor="val_loss")),
                            config=lambda values, **places: (_ for _ in ()).throw(AssertionError("trained")))
    assert run_trial(study, study.ask(), space, folder) == "FAIL"
    assert "symbolic link" in study.trials[0].user_attrs["fail_reason"]
    unchanged(victim, files)
