"""TrainStep on real small objects: a two-layer model, torch's SGD through dogcat's optimizer builder, the
Schedule, a GradScaler, the Criterion and timm's EMA; what ``update`` does at an accumulation boundary."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dogcat import load_config
from dogcat.engine.criterion import build_criterion
from dogcat.engine.ema import build_ema
from dogcat.engine.optim import Schedule, build_optimizer
from dogcat.engine.runtime import Runtime, grad_scaler
from dogcat.engine.state import TrainState
from dogcat.engine.step import NonFinite, TrainStep


def make_step(**options) -> TrainStep:
    cfg = load_config({"optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "scheduler": "none",
                       **options})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(optimizer, cfg.optim, steps_per_epoch=4, max_epoch=2)
    return TrainStep(cfg, model, optimizer, schedule, grad_scaler(torch.device("cpu"), "fp32"),
                     build_criterion(cfg, 3), build_ema(model, cfg.optim.ema_decay), Runtime(torch.device("cpu")))


def batch(seed: int = 0, n: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g), [f"{seed}-{i}" for i in range(n)]


def weights(step: TrainStep) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in step.model.state_dict().items()}


def test_update_is_one_sgd_step_then_schedule_and_ema():
    step, state = make_step(ema_decay=0.5), TrainState()
    before = weights(step)
    x, y, ids = batch()
    step.forward_backward(x, y, ids, boundary=True)
    grads = {k: p.grad.clone() for k, p in step.model.named_parameters()}
    assert step.update(state) and state.global_step == 1
    after = weights(step)
    assert all(torch.allclose(after[k], before[k] - 0.5 * grads[k]) for k in grads)  # w - lr * grad
    assert all(p.grad is None for p in step.model.parameters())  # cleared for the next step
    assert step.scheduler.last_epoch == 1
    assert all(torch.equal(step.eval_model.state_dict()[k], after[k]) for k in after)  # EMA step 1: a copy
    step.forward_backward(*batch(1), boundary=True)
    step.update(state)
    ema, now = step.eval_model.state_dict(), weights(step)
    assert all(torch.allclose(ema[k], 0.5 * after[k] + 0.5 * now[k]) for k in now)  # then the average
    assert step.meter.n == 12 and step.meter.mean() > 0


def test_accumulation_averages_the_micro_batches():
    one, two = make_step(), make_step(accum_steps=2)
    x, y, ids = batch(n=8)
    one.forward_backward(x, y, ids, boundary=True)
    two.forward_backward(x[:4], y[:4], ids[:4], boundary=False)
    two.forward_backward(x[4:], y[4:], ids[4:], boundary=True)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)  # (mean of 4 + mean of 4) / 2 = mean of 8


def test_clip_bounds_the_update_by_the_checked_norm():
    step, state = make_step(clip_grad_norm=1e-3), TrainState()
    before = weights(step)
    step.forward_backward(*batch(), boundary=True)
    step.update(state)
    moved = torch.cat([(weights(step)[k] - before[k]).flatten() for k in before])
    assert moved.norm().item() == pytest.approx(0.5 * 1e-3, rel=1e-4)  # lr x the clipped norm


def test_a_nan_loss_is_skipped_then_stops():
    step, state = make_step(nonfinite="skip", nonfinite_max_skips=2), TrainState()
    before = weights(step)
    x, y, ids = batch()
    step.forward_backward(x * float("nan"), y, ids, boundary=True)
    assert not step.update(state) and state.global_step == 0 and state.nonfinite_in_a_row == 1
    assert all(p.grad is None for p in step.model.parameters())  # the bad gradients are dropped
    assert all(torch.equal(weights(step)[k], before[k]) for k in before)
    step.forward_backward(x * float("nan"), y, ids, boundary=True)
    with pytest.raises(NonFinite, match="2 non-finite batches in a row"):
        step.update(state)


def test_an_inf_gradient_under_a_finite_loss_stops_naming_the_layer():
    step, state = make_step(), TrainState()
    step.model[3].weight.register_hook(lambda g: g * float("inf"))
    step.forward_backward(*batch(), boundary=True)
    assert torch.isfinite(step.last.loss)
    with pytest.raises(NonFinite, match=r"at step 1 .*first layer with a non-finite gradient: 3\.weight"):
        step.update(state)
    ok = make_step()
    ok.forward_backward(*batch(), boundary=True)
    assert ok.update(state) and state.nonfinite_in_a_row == 0  # a good step resets the count
