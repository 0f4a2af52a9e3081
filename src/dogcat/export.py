"""``dogcat export``: a trained model as ONNX, TorchScript or safetensors, plus a JSON sidecar, verified.

The exported model takes a normalised float32 NCHW batch and returns raw logits; ``softmax(logits / T)``
gives the class probabilities, with T the sidecar's ``temperature`` (``dogcat calibrate``; 1.0 when none). Everything else inference needs (classes, input size, channels, mean/std, the eval
resize and crop) is in the sidecar ``<file>.json``. The sidecar is written last, only after the
exported file reproduced PyTorch's outputs: an export without one is unchecked or incomplete.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .engine.trained import Loaded, load_model
from .runners import FORMATS, ExportError, Runner, _quiet, _require, external_data_files, runner, sidecar_path
from .io import atomic_write_text, disk_full_as, ensure_free, safe_dir, sha256_file, temp_file

CHECK_BATCHES = (1, 3, 3)  # odd sizes on purpose: the traced / exported batch is 2
EXTERNAL_DATA_BYTES = 1.5e9  # weights above this go to an ONNX "external data" file beside it (protobuf's 2 GB cap)


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float


def make_sidecar(lm: Loaded, fmt: str, path: Path) -> dict[str, Any]:
    """Sidecar contents for a loaded model exported to ``path``: its :class:`Preprocess` written out (the
    documented top-level keys, and the eval preprocessing spelled out for other runtimes)."""
    pre = lm.pre
    size, chans, n = pre.size, pre.in_chans, len(pre.classes)
    task: dict[str, Any] = {}
    if pre.multilabel:  # a sigmoid per label, and the thresholds that decide which labels apply
        task = {"task": pre.task, "thresholds": list(pre.cutoffs), "output": {
            "name": "logits", "shape": ["batch", n], "note": "a sigmoid of each output gives its label's probability; "
            "the label applies when that probability is at least its entry in thresholds"}}
    return {
        "format": fmt, "file": path.name, "model": lm.cfg.model.model, "class_names": list(pre.classes),
        "num_classes": n, "image_size": size, "in_chans": chans, "channels": pre.mode,
        "mean": list(pre.mean), "std": list(pre.std), "preprocess": pre.spec(),
        "input": {"name": "input", "shape": ["batch", chans, size, size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", n],
                   "note": "softmax(logits / temperature) over dim 1 gives the probabilities"},
        "temperature": lm.temperature,  # dogcat calibrate's (1.0: none); the file itself returns raw logits
        "dogcat_version": __version__, "torch_version": torch.__version__,
        "source_checkpoint": str(Path(lm.checkpoint).resolve()), **task,
    }


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    for module in ("onnx", "onnxscript"):  # torch.onnx.export (dynamo) imports them lazily, with a vaguer error
        _require(module)
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > EXTERNAL_DATA_BYTES
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with _quiet():
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=big, verbose=False)
    except Exception as e:  # torch.export cannot trace some models; the legacy tracer often can
        warnings.warn(f"torch.export-based ONNX export failed ({type(e).__name__}: {str(e)[:200]}); "
                      "retrying with the legacy TorchScript-based exporter")
        with _quiet():
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # trace, not script: timm / torchvision models trace reliably; the check below catches a bad trace
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _export_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt"})  # handles tied / shared tensors


def verify(model: nn.Module, run: Runner, in_chans: int, size: int, atol: float = 1e-4,
           batches: tuple[int, ...] = CHECK_BATCHES) -> float:
    """Max |exported - PyTorch| over random batches; raises :class:`ExportError` beyond ``atol``."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, in_chans, size, size, generator=gen)
        with torch.no_grad():
            want = model(x).float()
        got = run(x)
        if tuple(got.shape) != tuple(want.shape):
            raise ExportError(f"the exported model returned shape {tuple(got.shape)} for a batch of {b}, "
                              f"PyTorch {tuple(want.shape)}: the batch size is not dynamic")
        worst = max(worst, float((got - want).abs().max()))
    if not worst <= atol:  # also catches NaN
        raise ExportError(f"the exported model's outputs differ from PyTorch's by up to {worst:.3g} (> {atol:g}) "
                          f"on random batches of {', '.join(map(str, batches))}; it is not safe to ship. Try another "
                          f"--format, or report the model name; no sidecar was written")
    return worst


def export(target: str | None, fmt: str = "onnx", output: str | Path | None = None,
           overrides: dict[str, Any] | None = None, atol: float = 1e-4) -> ExportResult:
    """Export a run's (or checkpoint's) model to ``fmt``, check it against PyTorch, write the sidecar.

    Default output: ``RUN/export/model.onnx|.pt|.safetensors``."""
    fmt = str(fmt).lower()
    if output is not None and not isinstance(output, (str, Path)):
        raise ExportError(f"--output expects a file name, got {output!r}")
    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":  # before loading anything: a missing package is the likeliest failure
        for module in ("onnx", "onnxscript", "onnxruntime"):
            _require(module)
    lm = load_model(target, overrides)
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:  # our own folder: a real one, so neither the sidecar's removal nor the rename goes through a link
        path = safe_dir(lm.out_dir / "export") / f"model{FORMATS[fmt]}"
    sc = sidecar_path(path)
    sc.unlink(missing_ok=True)  # a stale sidecar must not vouch for a new, unchecked file
    model = lm.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    size, chans = lm.pre.size, lm.pre.in_chans
    example = torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(1))
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)
    big = fmt == "onnx" and need - (1 << 20) > EXTERNAL_DATA_BYTES  # external data is named after the file: no
    # temp name then
    with disk_full_as(path.parent, need, f"exporting {path.name}"):
        ensure_free(path.parent, need, f"exporting {path.name}")
        fd, tmp = temp_file(path.parent, path.name)  # written and checked under a temp name, renamed when good
        os.close(fd)
        target_file = path if big else tmp.with_name(tmp.name + FORMATS[fmt])
        try:
            if fmt == "onnx":
                _export_onnx(model, example, target_file)
            elif fmt == "torchscript":
                _export_torchscript(model, example, target_file)
            else:
                _export_safetensors(model, target_file)
            meta = make_sidecar(lm, fmt, path)
            if fmt == "onnx":  # the tensor files it reads, vouched for like the file itself
                meta["external_data"] = {loc: sha256_file(target_file.parent / loc)
                                         for loc in external_data_files(target_file)}
            diff = verify(model, runner(target_file, meta, trust=True), chans, size, atol)  # our own file
            meta["check"] = {"max_abs_diff": diff, "atol": atol, "batch_sizes": list(CHECK_BATCHES)}
            meta["sha256"] = sha256_file(target_file)
            if target_file != path:
                os.replace(target_file, path)
        except BaseException:
            if big:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".data").unlink(missing_ok=True)  # the exporter's external data
            raise
        finally:
            tmp.unlink(missing_ok=True)
            if target_file != path:
                target_file.unlink(missing_ok=True)
        atomic_write_text(sc, json.dumps(meta, indent=2))  # last: a reader sees no sidecar or a whole one
    return ExportResult(path, sc, fmt, diff)
