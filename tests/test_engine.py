"""Engine parts: optimizer groups, schedules, accumulation, precision options, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from dogcat import load_config, train
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.meters import EvalMeter
from dogcat.engine.optim import Schedule, build_optimizer
from dogcat.models import build_model, head_module


def _opt(**kw):
    cfg = load_config(kw)
    model = build_model("resnet18", 2)
    return model, cfg, build_optimizer(model, cfg)


def test_any_torch_optimizer_and_groups():
    model, cfg, opt = _opt(optimizer="RMSprop", lr=0.1, backbone_lr_mult=0.1)
    assert type(opt).__name__ == "RMSprop"
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": 0.1, "backbone": pytest.approx(0.01)}
    model, cfg, opt = _opt(freeze_backbone=True)
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trainable == {id(p) for p in head_module(model).parameters()}
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))


def _lrs(kind: str, epochs: int = 6, spe: int = 4, **kw) -> list[float]:
    model, cfg, opt = _opt(scheduler=kind, lr=1.0, **kw)
    sched = Schedule(opt, cfg.optim, spe, epochs)
    out = []
    for _ in range(epochs * spe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules():
    assert _lrs("step", step_size=2, lr_decay=0.5)[::4] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert _lrs("multistep", milestones=[1, 4], lr_decay=0.1)[::4] == pytest.approx([1, 0.1, 0.1, 0.1, 0.01, 0.01])
    cos = _lrs("cosine", min_lr=0.0)
    assert cos[0] == 1 and cos[-1] < 0.01 and all(a >= b for a, b in zip(cos, cos[1:]))
    warm = _lrs("none", warmup_epochs=1)
    assert warm[0] == pytest.approx(0.01) and warm[1] < warm[2] < warm[3] < 1 and warm[4:] == [1.0] * 20


def test_loss_rise_rule_and_state_round_trip():
    model, cfg, opt = _opt(scheduler="loss-rise", lr=1.0, lr_decay=0.5)
    sched = Schedule(opt, cfg.optim, 3, 5)
    for loss in (1.0, 0.8, 0.9, 0.95, 0.5):  # rises twice
        sched.epoch_end(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    state = sched.state_dict()
    model2, cfg2, opt2 = _opt(scheduler="loss-rise", lr=1.0, lr_decay=0.5)
    sched2 = Schedule(opt2, cfg2.optim, 3, 5)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.25) and sched2.prev_loss == 0.5


def test_resumed_cosine_follows_the_new_horizon():
    model, cfg, opt = _opt(scheduler="cosine", lr=1.0)
    sched = Schedule(opt, cfg.optim, 2, 4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # half-way through 4 epochs
    sched2 = Schedule(opt, cfg.optim, 2, 8)  # resumed with max_epoch 8
    sched2.load_state_dict(sched.state_dict())
    opt.step()
    sched2.step()
    assert sched2.last_epoch == 5  # step 5 of 16 now, not of 8
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 16)))


def test_log_loss_is_kaggles():
    meter = EvalMeter(2)
    logits = torch.tensor([[0.0, 100.0], [0.0, 0.0]])  # p(dog) = 1 (clipped) and 0.5
    meter.update(logits, torch.tensor([0, 1]))
    m = meter.compute()
    assert m["logloss"] == pytest.approx((-math.log(1e-15) - math.log(0.5)) / 2, rel=1e-4)  # 1 - (1 - 1e-15) is 0.9992e-15 in float64
    assert m["accuracy"] == 0.0 and m["confusion"] == [[0, 1], [1, 0]]  # a tie predicts class 0


@pytest.fixture(scope="module")
def tiny_kaggle(tmp_path_factory):
    from datagen import make_kaggle

    root = tmp_path_factory.mktemp("k")
    make_kaggle(root, n_per_class=6, n_test=2, bad=False, sizes=(32, 40))
    return root


def _run(root, tmp, **kw):
    cfg = load_config({"train_data_root": str(root / "train"), "runs_root": str(tmp), "model": "smallcnn",
                       "image_size": 24, "batch_size": 4, "num_workers": 0, "progress": "none",
                       "debug_file": None, "max_epoch": 1, **kw})
    return train(cfg)


def test_same_seed_same_weights(tiny_kaggle, tmp_path):
    a = load_checkpoint(_run(tiny_kaggle, tmp_path, seed=3).run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(_run(tiny_kaggle, tmp_path, seed=3).run_dir / "checkpoints" / "last.pt")["model"]
    c = load_checkpoint(_run(tiny_kaggle, tmp_path, seed=4).run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_accumulation_clipping_and_bf16_channels_last(tiny_kaggle, tmp_path):
    r = _run(tiny_kaggle, tmp_path, accum_steps=2, clip_grad_norm=1.0, precision="bf16", channels_last=True,
             max_epoch=2)
    ckpt = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")
    batches = math.ceil(8 / 4)  # 12 images, 30 % held out -> 8 training images, batch 4
    assert ckpt["state"]["global_step"] == 2 * math.ceil(batches / 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_clip_grad_norm_bounds_the_step(tiny_kaggle, tmp_path):
    """One plain SGD step (lr 1) moves the weights by exactly the clipped gradient: norm = the limit."""
    r = _run(tiny_kaggle, tmp_path, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, scheduler="none",
             clip_grad_norm=1e-3, max_steps=1)
    after = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)  # the run's initial weights (seed 0)
    init = build_model("smallcnn", 2, 3)
    step = torch.cat([(after[n] - p).flatten() for n, p in init.named_parameters()])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_freeze_backbone_trains_only_the_head(tiny_kaggle, tmp_path):
    r = _run(tiny_kaggle, tmp_path, freeze_backbone=True, lr=0.05)
    after = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)
    init = build_model("smallcnn", 2, 3).state_dict()
    conv = "features.0.0.weight"
    assert torch.equal(after[conv], init[conv])  # frozen: the seed-0 initial weights, untouched
    assert not torch.equal(after["classifier.1.weight"], init["classifier.1.weight"])
