"""Issue 14, hostile files and bad values, in one process (1): exports are data unless trusted, the debug
trigger, value ranges, output places. The rest in one process is in test_safety_files.py; what needs real
processes (the run lock, the inbox, kill -9, concurrent cache builders, a real full disk, the relaunch) is in
test_safety_live.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import dogcat
from dogcat import load_config, train
from dogcat.cli import main
from dogcat.config import OPTIONS, Config, ConfigError, from_dict
from dogcat.export import ExportError, export, sidecar_path
from dogcat.io import sha256_file

from hostile import one_error


def _img(root: Path) -> str:
    return str(root / "test" / "1.jpg")


# ---- 1. exports are data unless trusted -------------------------------------------------------------------

EVIL = '''
import torch, torch.nn as nn

class Evil(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file({victim!r}, shared=True, size=8, dtype=torch.uint8)
        t.fill_(66)
        return x.mean(dim=(2, 3))[:, :2] + t[0].float() * 0
'''


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_is_refused_unless_trusted_even_with_a_matching_sidecar(tiny_run, tmp_path, capsys, monkeypatch):
    root, run = tiny_run.data, tiny_run.run
    # a scripted module that writes into a file when it runs, with a sidecar that vouches for it (sha256 and all)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\0" * 8)
    (tmp_path / "evil_mod.py").write_text(EVIL.format(victim=str(victim)))
    spec = importlib.util.spec_from_file_location("evil_mod", tmp_path / "evil_mod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    evil = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(mod.Evil()), str(evil))
    good = export(str(run), "torchscript", tmp_path / "good.pt")
    meta = json.loads(sidecar_path(good.path).read_text())
    meta.update(sha256=sha256_file(evil), file=evil.name)
    sidecar_path(evil).write_text(json.dumps(meta))

    loads: list = []
    real = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert main(["predict", str(evil), _img(root)]) == 2
    line = one_error(capsys.readouterr().err)
    assert "refused" in line and "--trust-export" in line and "program" in line
    assert not loads and victim.read_bytes() == b"\0" * 8  # nothing ran
    with pytest.raises(ExportError, match="trust=True"):
        dogcat.load(evil)
    assert main(["predict", str(good.path), _img(root)]) == 2  # our own TorchScript export too: code is code

    # asked for: it runs, and does what it says (which is why it is refused by default)
    assert main(["predict", str(evil), _img(root), "--trust-export"]) == 0
    assert loads and victim.read_bytes() == b"B" * 8
    assert dogcat.load(good.path, trust=True).predict(_img(root))[0]["class"] in ("cat", "dog")


def test_an_export_must_be_the_file_its_sidecar_vouches_for(tiny_run, tmp_path, capsys):
    root, run = tiny_run.data, tiny_run.run
    res = export(str(run), "safetensors", tmp_path / "w.safetensors")
    assert main(["predict", str(res.path), _img(root)]) == 0
    capsys.readouterr()
    data = bytearray(res.path.read_bytes())
    data[-1] ^= 1
    res.path.write_bytes(bytes(data))
    assert main(["predict", str(res.path), _img(root)]) == 2
    assert "does not match its sidecar" in one_error(capsys.readouterr().err)
    for bad in ("{not json", "[1, 2]", json.dumps({"format": "onnx"})):  # damaged sidecars: one line naming it
        sidecar_path(res.path).write_text(bad)
        assert main(["predict", str(res.path), _img(root)]) == 2
        assert "sidecar" in one_error(capsys.readouterr().err)


# ---- 2. the debug trigger ------------------------------------------------------------------------------------

def test_debug_trigger_defaults_to_the_run_folder_and_fires_once_per_version(fmnist_dir, tmp_path):
    from dogcat.engine.commands import Debug
    from dogcat.engine.distributed import Dist
    from dogcat.engine.state import TrainState
    from dogcat.engine.steering import Steering

    assert Config().train.debug_file is None  # no shared /tmp/debug by default
    run_dir = tmp_path / "dbg"
    (run_dir / "control").mkdir(parents=True)
    (run_dir / "control" / "debug").touch()  # the default trigger: inside the run folder
    train(load_config({"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28,
                       "model": "smallcnn", "batch_size": 16, "val_split": 0.2, "print_freq": 1, "progress": "none",
                       "num_workers": 0, "max_epoch": 1, "run_dir": str(run_dir)}))
    assert len(list((run_dir / "debug").iterdir())) == 1  # 10 log steps, one version of the file: one dump

    trigger = tmp_path / "trigger"
    steering = Steering(load_config({"print_freq": 1}), tmp_path / "run", Dist(), torch.device("cpu"),
                        debug_file=str(trigger))
    state = TrainState(global_step=1)
    debugs = lambda: sum(isinstance(c, Debug) for c in steering.poll(state))  # noqa: E731
    assert debugs() == 0  # no file, nothing
    trigger.write_text("1")
    assert [debugs() for _ in range(3)] == [1, 0, 0]  # once per version, at whatever log step
    trigger.write_text("22")
    assert debugs() == 1
    os.chown(trigger, 54321, -1)  # somebody else's file (anyone can create /tmp/debug): ignored
    trigger.write_text("333")
    assert debugs() == 0
    steering.close()


# ---- 4. ranges and finiteness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, shown, allowed", [
    ("--lr=-1", "--lr=-1.0", "[0, inf)"), ("--lr=nan", "--lr=nan", "finite"), ("--lr=inf", "--lr=inf", "finite"),
    ("--batch-size=0", "--batch-size=0", "[1,"), ("--weight-decay=-5", "--weight-decay=-5.0", "[0, inf)"),
    ("--clip-grad-norm=-1", "--clip-grad-norm=-1.0", "(0, inf)"), ("--num-workers=-7", "--num-workers=-7", "[-1,"),
    ("--image-size=1", "--image-size=1", "[8, 4096]"), ("--seed=-3", "--seed=-3", "[0,"),
    ("--milestones=[3,-1]", "--milestones=[3, -1]", "each element"), ("--ema-decay=1", "--ema-decay=1.0", "[0, 1)"),
    ("--env=../../x", "--name='../../x'", "plain run name"),  # --env: the alias; named by its primary spelling
])
def test_bad_values_exit_2_naming_key_value_range_before_any_folder(arg, shown, allowed, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", arg, f"--runs-root={runs}"]) == 2
    line = one_error(capsys.readouterr().err)
    assert shown in line and allowed in line, line
    assert not runs.exists() and not (tmp_path.parent / "x").exists()


def test_every_numeric_option_has_a_range_and_recipes_and_stored_configs_share_it(tmp_path):
    for leaf, (_, f) in OPTIONS.items():
        if any(t in str(f.type) for t in ("int", "float")):
            assert f.metadata.get("range") is not None, leaf
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"--lr=nan is out of range"):
        load_config(config_file=recipe)
    with pytest.raises(ConfigError, match=r"--batch-size=0 .*in the checkpoint"):
        from_dict({"data": {"batch_size": 0}}, "the checkpoint")


def test_an_image_size_the_model_cannot_take_is_refused_before_any_folder(tiny_run, tmp_path, capsys):
    root = tiny_run.data
    runs = tmp_path / "runs"
    assert main(["train", f"--train-data-root={root / 'train'}", "--model=squeezenet", "--image-size=16",
                 f"--runs-root={runs}"]) == 2
    assert "--image-size=16 does not fit --model=squeezenet" in one_error(capsys.readouterr().err)
    assert not runs.exists()


@pytest.mark.parametrize("scheduler", ["cosine", "loss-rise", "onecycle"])
def test_setting_lr_sets_the_value_and_keeps_the_schedule_shape(scheduler):
    from dogcat.engine.optim import Schedule, build_optimizer
    from dogcat.models import build_model

    cfg = load_config({"model": "resnet18", "lr": 0.01, "backbone_lr_mult": 0.1, "scheduler": scheduler,
                       "optimizer": "sgd"})
    opt = build_optimizer(build_model("resnet18", 2, 3), cfg)
    sched = Schedule(opt, cfg.optim, steps_per_epoch=10, max_epoch=4)
    for _ in range(13):
        opt.step()
        sched.step()
    scale = sched._scale(sched.last_epoch)
    sched.set_base_lr(0.0)  # the old `ctl set lr=0` left lr at 0 for good (a ratio of 0)
    assert all(g["lr"] == 0 for g in opt.param_groups)
    sched.set_base_lr(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * scale, 0.01 * scale])
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * sched._scale(sched.last_epoch))


def test_resume_with_another_lr_after_lr_0(fmnist_dir, tmp_path):
    o = {"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28, "model": "smallcnn",
         "batch_size": 16, "val_split": 0.2, "progress": "none", "num_workers": 0, "print_freq": 1,
         "scheduler": "cosine", "runs_root": str(tmp_path), "env": "zero"}
    assert train(load_config({**o, "lr": 0.0, "max_steps": 2})).stopped
    run = tmp_path / "zero"
    train(load_config({"resume": str(run), "lr": 0.01, "max_steps": 4}, config_file=run / "config.yaml"))
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in steps if r.get("kind") == "step" and r["step"] > 2]
    assert lrs and all(0 < lr <= 0.01 for lr in lrs)  # the old code divided by the old lr, 0


# ---- 6. output places come from the command line, never from a checkpoint ------------------------------------

def test_a_foreign_checkpoint_does_not_choose_where_we_write(tiny_run, tmp_path, capsys):
    root, run = tiny_run.data, tiny_run.run
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    evil = tmp_path / "evil"
    ckpt["config"]["eval"].update(result_file=str(evil / "overwritten.csv"), output=str(evil / "o.csv"))
    ckpt["config"]["data"]["cache_dir"] = str(evil / "cache")
    ckpt["config"]["train"].update(runs_root=str(evil / "runs"), run_dir=str(evil / "run"))
    foreign = tmp_path / "downloaded" / "model.pt"
    foreign.parent.mkdir()
    torch.save(ckpt, foreign)
    images = shutil.copytree(root / "test", tmp_path / "test")  # --cache writes beside the data: a copy
    assert main(["test", str(foreign), f"--test-data-root={images}", "--cache"]) == 0
    assert (foreign.parent / "submission.csv").is_file() and not evil.exists()
    assert (images / ".dogcat-cache").is_dir()  # the cache went where the command line's data is
    mine = tmp_path / "mine.csv"
    assert main(["test", str(foreign), f"--test-data-root={root / 'test'}", f"--result-file={mine}"]) == 0
    assert mine.is_file() and not evil.exists()


def test_a_recipe_does_not_choose_where_we_write(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"runs_root": "/etc", "run_dir": "/root", "cache_dir": "~", "lr": 0.5,
                                      "result_file": "/tmp/x.csv", "debug_file": "/tmp/debug"}))
    with pytest.warns(UserWarning, match="does not choose where dogcat writes"):
        cfg = load_config({"runs_root": str(tmp_path)}, config_file=recipe)
    assert (cfg.train.runs_root, cfg.train.run_dir, cfg.data.cache_dir, cfg.eval.result_file, cfg.train.debug_file,
            cfg.optim.lr) == (str(tmp_path), None, None, None, None, 0.5)
