"""Recipe options at tiny sizes: EMA (checkpointed, exact resume, used by val), --precision=auto,
lr-find, mixup / cutmix / label smoothing / onecycle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dogcat import evaluate, load_config, train
from dogcat.cli import main
from dogcat.config import builtin
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.optim import Schedule
from dogcat.engine.criterion import Criterion
from dogcat.engine.precision import candidates, choose_precision
from dogcat.models import build_model

from test_checkpoint import base, logged


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # precision.json in tmp, not ~/.cache


def events(run: Path, name: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "event" and r.get("event") == name]


def test_ema_checkpointed_resumes_exactly_and_is_evaluated(fmnist_dir, tmp_path):
    kw = dict(ema_decay=0.9, mixup=0.2, label_smoothing=0.1)  # mixup draws from the checkpointed numpy RNG
    ref = train(load_config(base(fmnist_dir, tmp_path, env="ref", **kw)))
    run = tmp_path / "cut"
    assert train(load_config(base(fmnist_dir, tmp_path, env="cut", max_steps=4, **kw))).stopped
    for max_steps in (13, None):
        train(load_config({"resume": str(run), "max_steps": max_steps}, config_file=run / "config.yaml"))
    a, b = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["ema"] is not None and set(a["ema"]) == set(a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])  # it is an average
    assert logged(ref.run_dir) == logged(run)
    best = next(r for r in ref.history if r["epoch"] == ref.best_epoch)
    assert evaluate(str(ref.run_dir))["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)  # EMA weights


def test_precision_auto_reports_its_choice(fmnist_dir, tmp_path):
    res = train(load_config(base(fmnist_dir, tmp_path, precision="auto", max_epoch=1)))
    (ev,) = events(res.run_dir, "precision")
    if candidates(torch.device("cpu")) == ("fp32",):  # no native bf16 (Zen 3): fp32 without timing anything
        assert ev["chosen"] == "fp32" and ev["seconds"] == {} and "key" in ev
    else:  # native bf16: both timed, the faster one chosen
        assert set(ev["seconds"]) == {"fp32", "bf16"} and ev["chosen"] == min(ev["seconds"], key=ev["seconds"].get)
    assert load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["precision"] == ev["chosen"]


def test_precision_probe_times_each_option_and_caches(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.zeros(2, 1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    args = (model, torch.device("cpu"), (1, 8, 8), 4, False, "tiny", 3)
    choice, info = choose_precision(*args, steps=1, options=("fp32", "bf16"))
    assert set(info["seconds"]) == {"fp32", "bf16"} and not info["cached"]
    assert choice == min(info["seconds"], key=info["seconds"].get)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probed on a copy
    assert torch.equal(rng, torch.get_rng_state())
    again, info2 = choose_precision(*args, steps=1, options=("fp32", "bf16"))
    assert (again, info2["cached"]) == (choice, True)
    assert info["key"] in json.loads((tmp_path / "cache" / "dogcat" / "precision.json").read_text())


def test_lr_find_writes_plot_and_leaves_state(fmnist_dir, tmp_path, capsys):
    from dogcat.engine.lr_find import range_test

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    res = range_test(model, opt, lambda: [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)],
                     torch.nn.functional.cross_entropy, torch.device("cpu"), steps=60)
    assert 3 <= len(res.lrs) <= 60 and res.lrs[0] == pytest.approx(1e-7) and res.suggestion is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.123 and not opt.state

    out = tmp_path / "lr.png"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in base(fmnist_dir, tmp_path).items() if v is not None]
    assert main(["lr-find", *args, f"--output={out}", "--steps=30"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "suggested lr" in capsys.readouterr().out


@pytest.fixture
def seen(monkeypatch):
    """What the training's criterion was given and gave, step by step: (images in, images out, labels, targets)
    and (logits, targets, loss)."""
    calls: dict[str, list] = {"mix": [], "loss": []}
    mix, loss = Criterion.__call__, Criterion.loss

    def spy_mix(self, images, labels):
        out, targets = mix(self, images, labels)
        calls["mix"].append((images.clone(), out.detach().clone(), labels.clone(), targets.detach().clone()))
        return out, targets

    def spy_loss(self, logits, targets):
        value = loss(self, logits, targets)
        calls["loss"].append((logits.detach().clone(), targets.detach().clone(), value.detach().clone()))
        return value

    monkeypatch.setattr(Criterion, "__call__", spy_mix)
    monkeypatch.setattr(Criterion, "loss", spy_loss)
    return calls


def how_mixed(x: torch.Tensor, out: torch.Tensor, y: torch.Tensor, t: torch.Tensor, smoothing: float) -> str:
    """Which of timm's two mixes made (out, t) from (x, y), checked exactly: "mixup" (out = lam x + (1 - lam)
    x.flip(0)) or "cutmix" (a box of x.flip(0) of area 1 - lam pasted into x), with t = lam t(y) + (1 - lam)
    t(y.flip(0)) for smoothed one-hot t(.); else an AssertionError."""
    c = t.shape[1]
    hot = lambda labels: torch.nn.functional.one_hot(labels, c) * (1 - smoothing) + smoothing / c  # noqa: E731
    i = int((y != y.flip(0)).nonzero()[0])  # an image whose partner has another class: lam is readable there
    lam = float((t[i, y[i]] - smoothing / c) / (1 - smoothing))
    assert torch.allclose(t, lam * hot(y) + (1 - lam) * hot(y.flip(0)), atol=1e-6)
    if torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-5):
        return "mixup"
    diff = (out != x).any(1).any(0)  # (H, W): where the pasted box changed a pixel of some image
    rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    assert torch.equal(out[..., box[0], box[1]], x.flip(0)[..., box[0], box[1]])
    outside = torch.ones_like(diff)
    outside[box] = False
    assert torch.equal(out[..., outside], x[..., outside])
    assert len(rows) * len(cols) <= round((1 - lam) * diff.numel())  # timm's lam is the box's area, exactly
    return "cutmix"


@pytest.mark.parametrize("kw, kinds", [({"mixup": 0.4}, {"mixup"}), ({"cutmix": 1.0}, {"cutmix"}),
                                       ({"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1}, {"mixup", "cutmix"})])
def test_mixup_and_cutmix_mix_the_training_batches(fmnist_dir, tmp_path, seen, kw, kinds):
    res = train(load_config(base(fmnist_dir, tmp_path, max_steps=6, **kw)))
    assert res.stopped and len(seen["mix"]) == 6
    found = {how_mixed(*step, kw.get("label_smoothing", 0.0)) for step in seen["mix"]}
    assert found <= kinds and (found == kinds or len(kinds) == 2)  # both: a coin per batch decides which
    assert all(torch.equal(t, t2) for (*_, t), (_, t2, _) in zip(seen["mix"], seen["loss"]))  # scored on them


def test_label_smoothing_is_in_the_training_loss(fmnist_dir, tmp_path, seen):
    train(load_config(base(fmnist_dir, tmp_path, max_steps=2, label_smoothing=0.1)))
    for logits, targets, loss in seen["loss"]:
        assert targets.dtype == torch.long  # hard labels, smoothed inside the loss
        smooth = torch.nn.functional.cross_entropy(logits.float(), targets, label_smoothing=0.1)
        assert loss.item() == pytest.approx(smooth.item(), rel=1e-5)
        assert abs(loss.item() - torch.nn.functional.cross_entropy(logits.float(), targets).item()) > 1e-3


def test_onecycle_lr_follows_the_one_cycle_over_the_whole_run(fmnist_dir, tmp_path):
    """Logged every step (print_freq 1) over 2 epochs of 10 steps: torch's OneCycleLR shape, as its doc says."""
    res = train(load_config(base(fmnist_dir, tmp_path, scheduler="onecycle", lr=0.01, print_freq=1, warmup_epochs=0)))
    lrs = [r["lr"] for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
           if r.get("kind") == "step"]  # the lr after each step: what the next step uses
    assert len(lrs) == 20
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.01, rel=0.03) and peak + 1 == 6  # 30 % of the 20 steps rising
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # up from lr/25 ...
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # ... then down to lr/25/1e4
    assert lrs[-1] < 0.01 / 25 / 1e3
    p = torch.nn.Parameter(torch.zeros(1))
    ref = torch.optim.SGD([p], lr=0.01)
    # torch's phases end at step pct x total - 1 and total - 1: the same cycle is 6 steps up, 14 down
    cycle = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.01, total_steps=21, pct_start=7 / 21)
    want = []
    for _ in range(20):
        ref.step()
        cycle.step()
        want.append(ref.param_groups[0]["lr"])
    assert lrs == pytest.approx(want, rel=1e-6)


def test_criterion_targets():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    xm, t = Criterion(3, 0.1, mixup=0.5)(x, y)
    assert t.shape == (4, 3) and torch.allclose(t.sum(1), torch.ones(4)) and not torch.equal(xm, x)
    _, t_odd = Criterion(3, 0.3, cutmix=1.0)(x[:3], y[:3])  # an odd batch is smoothed, not mixed
    assert torch.allclose(t_odd[0], torch.tensor([0.8, 0.1, 0.1]))
    logits = torch.randn(4, 3)
    hard = Criterion(3, 0.1)
    assert hard(x, y)[1] is y
    soft = torch.nn.functional.one_hot(y, 3) * 0.9 + 0.1 / 3
    assert hard.loss(logits, y) == pytest.approx(hard.loss(logits, soft).item(), rel=1e-5)


def test_onecycle_shape():
    cfg = load_config({"scheduler": "onecycle", "lr": 1.0})
    p = torch.nn.Parameter(torch.zeros(1))
    sched = Schedule(torch.optim.SGD([p], lr=1.0), cfg.optim, steps_per_epoch=10, max_epoch=10)
    lrs = [sched._scale(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert lrs.index(max(lrs)) == 30 and lrs[-1] < 1e-3


# sweep-*.yaml are search spaces (a recipe + a search: block), checked by tests/test_sweep.py
RECIPES = [name for name in builtin.names() if not name.startswith("sweep-")]  # the package's, by name


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_and_builds_its_model(recipe):
    cfg = load_config(config_file=recipe)
    model = build_model(cfg.model.model, 2 if cfg.data.dataset == "kaggle" else 10,
                        1 if cfg.data.dataset == "fashion-mnist" else 3)  # no weights: nothing downloads
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("recipe", ["fashion-mnist", "fashion-mnist-94"])
def test_fashion_mnist_recipes_fall_back_to_fp32_without_native_bf16(fmnist_dir, tmp_path, monkeypatch, recipe):
    """On a CPU without AVX-512 BF16 / AMX (Zen 3 here) `precision: auto` is fp32 without a probe."""
    from dogcat.engine import precision

    monkeypatch.setattr(precision, "candidates", lambda device: ("fp32",))
    res = train(load_config({"fashion_mnist_root": str(fmnist_dir), "runs_root": str(tmp_path), "max_epoch": 1,
                             "progress": "none", "debug_file": None}, config_file=recipe))
    (ev,) = events(res.run_dir, "precision")
    assert ev["chosen"] == "fp32" and ev["seconds"] == {} and "no native half precision" in ev["reason"]
    assert load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["precision"] == "fp32"


# --- built-in recipes (package data) and `dogcat demo` ---------------------------------------------------------

def test_config_name_is_a_built_in_recipe_unless_a_file_of_that_name_exists(tmp_path, monkeypatch):
    from dogcat.config import ConfigError

    monkeypatch.chdir(tmp_path)
    assert load_config(config_file="fashion-mnist").model.model == "fastcnn"
    assert load_config(config_file="fashion-mnist.yaml").model.model == "fastcnn"
    Path("fashion-mnist").write_text("model: {model: smallcnn}\n")
    assert load_config(config_file="fashion-mnist").model.model == "smallcnn"  # a file always wins
    with pytest.raises(ConfigError, match=r"no such file 'fashoin-mnist', nor a built-in .*fashion-mnist-94"):
        load_config(config_file="fashoin-mnist")
    with pytest.raises(ConfigError, match="no such file 'sub/fashion-mnist.yaml'"):
        load_config(config_file="sub/fashion-mnist.yaml")  # a path is never a built-in name


def test_recipes_command_lists_describes_and_prints_them(tmp_path, capsys):
    assert main(["recipes"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(builtin.names()) >= {"fashion-mnist", "fashion-mnist-94", "dogs-vs-cats",
                                                 "sweep-fashion-mnist"}
    assert "fastcnn on Fashion-MNIST" in rows["fashion-mnist"]  # the first line of its comment
    assert all(len(line.split()) > 3 for line in rows.values()), rows  # every recipe has a description
    assert main(["recipes", "fashion-mnist"]) == 0
    text = capsys.readouterr().out
    mine = tmp_path / "mine.yaml"
    mine.write_text(text.replace("max_epoch: 8", "max_epoch: 3"))  # copy, edit, use
    assert load_config(config_file=mine).train.max_epoch == 3
    assert load_config(config_file=mine).optim == load_config(config_file="fashion-mnist").optim
    assert main(["recipes", "nope"]) == 2 and "no built-in recipe 'nope'" in capsys.readouterr().err


def test_demo_command_runs_in_any_folder(fmnist_dir, tmp_path, monkeypatch, capsys):
    """`dogcat demo` needs no clone: the recipe is the package's, the run folder goes to ./runs of the current
    folder; options as for train (here a tiny Fashion-MNIST and one epoch)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["demo", f"--fashion-mnist-root={fmnist_dir}", "--max-epoch=1", "--progress=none",
                 "--precision=fp32"]) == 0  # fp32: no precision probe, a few seconds less
    out = capsys.readouterr().out
    assert "Fashion-MNIST test accuracy" in out and out.count("(true: ") == 8
    (run,) = (elsewhere / "runs").glob("demo-fashion-mnist*")
    assert len(list((run / "samples").glob("*.png"))) == 8 and (run / "submission.csv").is_file()
    assert load_config(config_file=run / "config.yaml").model.model == "fastcnn"  # the built-in recipe's
