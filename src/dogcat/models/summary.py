"""Model summaries: a per-layer table, parameter counts, FLOPs and an activation-memory estimate.

    s = summarize(model, (1, 3, 224, 224))   # one forward pass of one image, in eval mode, no gradients
    print(s.table()); s.line("resnet34")      # "resnet34: 21,285,698 parameters (...), 7.33 GFLOPs/image, ..."

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it ships with torch (no extra dependency),
counts by operator, so a functional ``F.conv2d`` or an attention ``matmul`` counts as much as an ``nn.Conv2d``
(module-based counters such as torchinfo's or thop's see only modules with weights), and works on the meta
device, so ``dogcat summary`` of a 4096-pixel ResNet costs no memory. Its convention: a multiply-add is 2 FLOPs,
and only matrix products and convolutions count (normalisation, activations and pooling are left out, a few
percent in CNNs). The table itself is forward hooks: no library's table carries those FLOPs per layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn


@dataclass
class Layer:
    """One module: its dotted name (as ``--layer`` takes it), type, last output shape, parameters and FLOPs."""

    name: str
    type: str
    output_shape: list[int] | None  # None: not called in the forward pass (or no tensor output)
    params: int  # its own and its children's
    flops: int  # per image, its own and its children's


@dataclass
class Summary:
    """What :func:`summarize` measured, per image (the input's batch is divided out)."""

    input_shape: list[int]  # one image: C, H, W
    params: int
    trainable: int
    flops: int  # forward pass, a multiply-add = 2
    activation_bytes: int  # outputs of the leaf modules, each tensor once (in-place results and views are shared)
    param_bytes: int
    layers: list[Layer] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        return self.params - self.trainable

    def line(self, name: str) -> str:
        """One log line: ``smallcnn: 40,794 parameters (40,794 trainable), 11.1 MFLOPs/image, ~0.3 MB ...``."""
        c, h, w = self.input_shape
        frozen = f", {self.frozen:,} frozen" if self.frozen else ""
        return (f"{name}: {self.params:,} parameters ({self.trainable:,} trainable{frozen}), "
                f"{si(self.flops)}FLOPs/image, ~{self.activation_bytes / 1e6:.3g} MB activations/image "
                f"at {h}x{w}x{c}")

    def table(self) -> str:
        """The per-layer table, then the totals."""
        name_w = max([len(r.name) for r in self.layers] + [5])
        type_w = max([len(r.type) for r in self.layers] + [4])
        rows = [f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output shape':<18} {'parameters':>12} {'FLOPs':>9}"]
        for r in self.layers:
            shape = "x".join(map(str, r.output_shape)) if r.output_shape is not None else "-"
            rows.append(f"{r.name:<{name_w}}  {r.type:<{type_w}}  {shape:<18} {r.params:>12,} {si(r.flops).strip():>9}")
        c, h, w = self.input_shape
        rows += ["", f"input: {c} x {h} x {w} (channels x height x width)",
                 f"parameters: {self.params:,} ({self.trainable:,} trainable, {self.frozen:,} frozen), "
                 f"{self.param_bytes / 1e6:.3g} MB",
                 f"FLOPs per image: {si(self.flops)}FLOPs (forward; a multiply-add = 2; a training step is ~3x)",
                 f"activations per image: ~{self.activation_bytes / 1e6:.3g} MB (leaf-module outputs, kept for "
                 f"the backward pass when training)"]
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frozen": self.frozen}


def si(n: float) -> str:
    """``11075328`` -> ``11.1 M`` (a space when there is no prefix, so ``f"{si(n)}FLOPs"`` reads well)."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:g} "


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block, then each module's own mode back (a frozen backbone may be in eval on purpose)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper or a ``torch.compile`` result."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where an input for ``model`` goes: its parameters' device and floating dtype (CPU, float32 without any)."""
    ref = next(model.parameters(), None)
    if ref is None:
        return torch.device("cpu"), torch.float32
    return ref.device, ref.dtype if ref.is_floating_point() else torch.float32


def _depth(name: str) -> int:
    return name.count(".") + 1


def summarize(model: nn.Module, input_shape: tuple[int, ...], depth: int | None = None) -> Summary:
    """Run one forward pass of zeros of ``input_shape`` (N, C, H, W) through ``model`` in eval mode without
    gradients and measure it (per image: divided by N). Zeros, so no random number is drawn (a training's
    exact resume is untouched); on the model's device and dtype, which may be ``meta`` (shapes only).

    ``depth``: the table lists modules down to that many dots + 1 (``layer4.1`` is depth 2), each with its
    children's totals; ``None`` lists every leaf module (and any that holds parameters of its own)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = unwrap(model)
    device, dtype = placement(model)
    x = torch.zeros(input_shape, device=device, dtype=dtype)
    shapes: dict[str, list[int]] = {}
    leaf_outputs: list[torch.Tensor] = []
    leaves = {m for m in model.modules() if next(m.children(), None) is None}

    def hook(name: str, module: nn.Module) -> Any:
        def record(mod: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes[name] = [int(s) for s in out.shape[1:]]
                if module in leaves:
                    leaf_outputs.append(out)
        return record

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if n]
    counter = FlopCounterMode(display=False)
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    n = max(1, input_shape[0])
    flops_by = {k.partition(".")[2]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}
    layers = [Layer(name, type(m).__name__, shapes.get(name), sum(p.numel() for p in m.parameters()),
                    flops_by.get(name, 0) // n)
              for name, m in model.named_modules() if name and _listed(name, m, depth)]
    params = list(model.parameters())
    return Summary(
        input_shape=[int(s) for s in input_shape[1:]],
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        flops=counter.get_total_flops() // n,
        activation_bytes=(_distinct_bytes([x, *leaf_outputs])) // n,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        layers=layers)


def _listed(name: str, module: nn.Module, depth: int | None) -> bool:
    if depth is not None:
        return _depth(name) == depth or (_depth(name) < depth and next(module.children(), None) is None)
    return next(module.children(), None) is None or next(module.parameters(recurse=False), None) is not None


def _distinct_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the tensors, each once: an in-place op returns the tensor it was given, and a view (Flatten)
    shares its base's memory, so neither adds any. Identity, not storage pointers, so it works on ``meta``."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) in seen or t._base is not None:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def summary_line(model: nn.Module, in_chans: int, image_size: int, name: str | None = None) -> str:
    """The one line a training logs at its start (parameters, FLOPs and activations per image). Never raises:
    a model whose forward pass cannot be measured still gets its parameter counts, and the reason.

    Pass the plain module (before ``compile``; a DDP wrapper is looked through); the pass is one image of
    zeros in eval mode without gradients, on the model's device: no random number is drawn, nothing trains."""
    name = name or type(unwrap(model)).__name__
    try:
        return summarize(model, (1, in_chans, image_size, image_size)).line(name)
    except Exception as e:  # noqa: BLE001 - a summary must never stop a training
        params = list(unwrap(model).parameters())
        total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
        return (f"{name}: {total:,} parameters ({trainable:,} trainable); FLOPs not measured "
                f"({type(e).__name__}: {' '.join(str(e).split())[:120]})")


def describe(name: str, num_classes: int = 2, in_chans: int = 3, image_size: int = 224,
             depth: int | None = None) -> Summary:
    """``dogcat summary``: the summary of a model by name, built on the meta device (shapes only: no memory,
    no weights, any input size in a fraction of a second); on the CPU when an operation lacks a meta kernel."""
    from . import build_model, check_input

    check_input(name, in_chans, image_size)  # a size the model cannot take: one line naming both
    shape = (1, in_chans, image_size, image_size)
    try:
        with torch.device("meta"):
            return summarize(build_model(name, num_classes, in_chans), shape, depth)
    except NotImplementedError:
        return summarize(build_model(name, num_classes, in_chans), shape, depth)
