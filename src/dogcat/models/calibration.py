"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks"): one number T > 0 that
divides a model's outputs before the softmax, fitted on held-out data by minimising the negative
log-likelihood. It changes no prediction (the argmax of ``logits / T`` is the argmax of ``logits``), only how
confident the probabilities are: T > 1 softens an overconfident model, T < 1 sharpens an underconfident one
(label smoothing, mixup).

The one rule every reader applies (val, test, predict, report, explain, an export's consumer):
``probabilities = softmax(output / T)``, where ``output`` is the model's logits, or with ``--tta`` the log of
its averaged probabilities (``models/tta.py``); T = 1 when nothing was fitted. The training never reads T.

Also here, shared by the validation meter (``engine/meters.py``) and the report's collector: the binning behind
the expected calibration error (:func:`reliability_bins`; the formula is the metrics table's ``ece``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metrics import ECE_BINS

# The range a stored T must lie in, and the range the fit searches. Beyond it the probabilities are one-hot
# (T < 0.01 multiplies the logits by more than 100) or uniform (T > 100); a fit that ends there says the
# model or the validation set is broken, and a stored value there did not come from a fit: refused.
T_MIN, T_MAX = 0.01, 100.0


def temperature_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a stored temperature (not a number, not finite, outside [T_MIN, T_MAX]), or None.
    Checkpoints and export sidecars are data from elsewhere: both check their T with this one rule."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"temperature is {value!r}, not a number"
    if not math.isfinite(value) or not T_MIN <= value <= T_MAX:
        return f"temperature is {value!r}, outside [{T_MIN:g}, {T_MAX:g}]"
    return None


def probabilities(output: torch.Tensor, temperature: float = 1.0, multilabel: bool = False) -> torch.Tensor:
    """``softmax(output / T)`` over dim 1, in float32: the one rule (see the module's docstring); a multi-label
    model's: one ``sigmoid(output / T)`` per label (its T is 1: ``dogcat calibrate`` fits single-label runs)."""
    out = output.float() / temperature
    return out.sigmoid() if multilabel else out.softmax(1)


class TemperatureScaled(nn.Module):
    """``model(x) / T``: a model (or TTA wrapper, or any callable) whose outputs give calibrated probabilities
    under softmax; what val and the report validate with when a temperature applies."""

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor], temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float() / self.temperature


def with_temperature(model: nn.Module, temperature: float) -> nn.Module:
    return model if temperature == 1.0 else TemperatureScaled(model, temperature)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` (float64)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of ``softmax(logits / T)`` over (N, C) ``logits``.

    torch's L-BFGS with a strong-Wolfe line search on log T (as the paper's reference code does, with
    log T so that T stays positive without a constraint). The NLL is convex in 1/T, hence unimodal in log T:
    the line search cannot stop at a false minimum. A model that is right on every image with a margin
    wants T -> 0 (the NLL keeps falling): the result is then clipped to T_MIN, as any result outside the range.
    """
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)
    lo, hi = math.log(T_MIN), math.log(T_MAX)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # the line search may step far out; clamping inside keeps exp() finite and the loss flat beyond the range
        loss = F.cross_entropy(z / log_t.clamp(lo - 1, hi + 1).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = math.exp(float(log_t.detach()))
    return min(max(t, T_MIN), T_MAX) if math.isfinite(t) else 1.0


@torch.no_grad()
def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """(3, bins) float64 sums over images: count, confidence (the top probability) and correct (top class is
    the label), binned by confidence into ``bins`` equal-width bins over [0, 1]: bin b holds [b/B, (b+1)/B), the last
    also 1.0 (torchmetrics' MulticlassCalibrationError bins the same way but gives a confidence of exactly 1.0 a
    bin of its own). Sums, not lists, so that DDP adds them with one all_reduce and memory does not grow with
    the data; ``metrics.ece`` turns them into the expected calibration error. Hand-written for that reason:
    torchmetrics' metric keeps every confidence until it computes."""
    probs = probs.detach().double().cpu()
    conf, pred = probs.max(1)
    correct = (pred == labels.detach().cpu().long()).double()
    conf = conf.nan_to_num(0.0)
    b = (conf * bins).floor().long().clamp(0, bins - 1)
    out = torch.zeros(3, bins, dtype=torch.float64)
    out[0].index_add_(0, b, torch.ones_like(conf))
    out[1].index_add_(0, b, conf)
    out[2].index_add_(0, b, correct)
    return out
