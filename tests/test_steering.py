"""Steering and ``after_step`` on real small objects: a tiny Fashion-MNIST run's parts (model, optimizer, schedule,
scaler, loaders) in a real run folder with its ``dogcat ctl`` inbox; commands as values, applied in one place."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from datagen import tiny_options
from dogcat import load_config
from dogcat.control import StopFlag
from dogcat.data import build_train_val
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.commands import Save, Set, Stop
from dogcat.engine.distributed import Dist
from dogcat.engine.loop import after_step
from dogcat.engine.parts import build_parts
from dogcat.engine.state import TrainState
from dogcat.engine.steering import Steering
from dogcat.tracking.run import Run


@pytest.fixture
def live(fmnist_dir, tmp_path):
    """A run's parts after one real optimizer step, and its Steering (inbox listed at every poll)."""
    cfg = load_config(tiny_options(fmnist_dir, tmp_path, env="live"))
    run = Run.create(cfg)
    p = build_parts(cfg, run, build_train_val(cfg.data), Dist(), torch.device("cpu"), resuming=False)
    state = TrainState()
    p.sampler.set_epoch(0)
    b = next(iter(p.train_loader))
    images, labels = p.runtime.to_device(b.images, b.labels)
    p.step.forward_backward(p.data.batch_transform(images, b.seed), labels, b.ids, boundary=True)
    assert p.step.update(state)
    signals = StopFlag()
    steering = Steering(cfg, run.folder.control, Dist(), torch.device("cpu"), signals, str(run.folder.debug_trigger),
                        run.log)
    steering.inbox.min_interval = 0.0  # the trainer lists it at most every 0.2 s
    yield cfg, p, state, steering, signals
    steering.close()
    run.unlock()


def send(run: Path, *commands: str) -> list[str]:
    """What `dogcat ctl` drops into the inbox (without waiting for the answer); the files' names."""
    names = []
    for i, command in enumerate(commands):
        names.append(f"{time.time_ns()}-{i:02d}.json")
        (run / "control" / "inbox" / names[-1]).write_text(json.dumps({"command": command, "sent": time.time()}))
    return names


def answers(run: Path, names: list[str]) -> list[dict]:
    return [json.loads((run / "control" / "done" / n).read_text()) for n in names]


def test_inbox_commands_are_values_applied_and_answered_in_one_place(live):
    cfg, p, state, steering, _ = live
    run = p.run.path
    names = send(run, "set lr=0.01", "set batch_size=3", "explode", "save", "eval", "debug")
    commands = steering.poll(state)
    assert [type(c).__name__ for c in commands] == ["Set", "Set", "Invalid", "Save", "Eval", "Debug"]
    assert commands[0] == Set("lr", "0.01", reply=names[0]) and [c.reply for c in commands] == names
    assert steering.poll(state) == []  # each file is read once

    assert after_step(p, state, commands, steering, cfg) is None  # nothing said stop
    lr, no, bad, save, ev, dbg = answers(run, names)
    assert lr["ok"] and lr["message"] == "lr: 0.003 -> 0.01" and lr["step"] == 1
    assert cfg.optim.lr == p.step.scheduler.lr == 0.01
    assert [g["lr"] for g in p.step.optimizer.param_groups] == [pytest.approx(0.01 * g["lr_mult"])
                                                                 for g in p.step.optimizer.param_groups]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.01  # the run's record
    assert not no["ok"] and "cannot change while training" in no["message"]
    assert not bad["ok"] and "unknown command 'explode'" in bad["message"]
    assert save["ok"] and load_checkpoint(run / "checkpoints" / "last.pt")["state"]["global_step"] == 1
    assert ev["ok"] and ev["metrics"]["count"] == 40
    assert dbg["ok"] and "no terminal" in dbg["message"] and (run / "debug" / "step-0000001" / "layers.json").exists()
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["command"] for r in logged if r.get("event") == "control"] == [
        "set lr=0.01", "set batch_size=3", "explode", "save", "eval", "debug"]


def test_due_saves_and_every_kind_of_stop(live):
    cfg, p, state, steering, signals = live
    last = p.run.path / "checkpoints" / "last.pt"
    assert steering.poll(state) == []
    cfg.train.save_every_steps = 1
    assert steering.poll(state) == [Save()]  # our own: no reply
    assert after_step(p, state, [Save()], steering, cfg) is None and last.exists()
    cfg.train.save_every_steps = 0

    cfg.train.max_steps = 1
    assert steering.poll(state) == [Stop(why="max_steps")]
    last.unlink()
    assert after_step(p, state, [Stop(why="max_steps")], steering, cfg) == Stop(why="max_steps")
    assert last.exists()  # a stop is checkpointed
    cfg.train.max_steps = None

    signals.signum = signal.SIGTERM  # as StopFlag's handler sets it
    assert steering.poll(state) == [Stop(why="signal")]
    signals.signum = None

    (name,) = send(p.run.path, "stop")
    assert steering.poll(state) == [Stop(reply=name)]
    assert after_step(p, state, [Stop(reply=name)], steering, cfg) == Stop(reply=name)
    assert "stopping" in answers(p.run.path, [name])[0]["message"]


def test_a_failing_command_is_answered_and_training_goes_on(live):
    cfg, p, state, steering, _ = live
    p.val_loader = None  # a run without a validation set: eval cannot run
    names = send(p.run.path, "eval", "set lr=nan")
    assert after_step(p, state, steering.poll(state), steering, cfg) is None
    ev, lr = answers(p.run.path, names)
    assert not ev["ok"] and "no validation set" in ev["message"]
    assert not lr["ok"] and "--lr=nan is out of range" in lr["message"] and cfg.optim.lr == 0.003
