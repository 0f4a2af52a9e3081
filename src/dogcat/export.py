"""``dogcat export``: a trained model as ONNX, TorchScript or safetensors, plus a JSON sidecar, verified.

The exported model takes a normalised float32 NCHW batch and returns logits (softmax gives the class
probabilities). Everything else inference needs (classes, input size, channels, mean/std, the eval
resize and crop) is in the sidecar ``<file>.json``. The sidecar is written last, only after the
exported file reproduced PyTorch's outputs: an export without one is unchecked or incomplete.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .config import DogcatError
from .data.transforms import EVAL_CROP_RATIO
from .io import MalformedFile, atomic_write_text, disk_full_as, ensure_free, read_json, temp_file
from .tracking.manifest import sha256_file

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
INSTALL_HINT = ("install the optional export packages: pip install 'dogcat-vision[export]' "
                "(in this repository: .venv/bin/pip install -e '.[export]')")
CHECK_BATCHES = (1, 3, 3)  # odd sizes on purpose: the traced / exported batch is 2
Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportError(DogcatError, ValueError):
    """An export that cannot be made, checked or loaded; the message says what to do. The CLI exits 2."""


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


SIDECAR_KEYS = ("format", "model", "class_names", "image_size", "in_chans", "mean", "std", "preprocess", "sha256")
TRUST_HINT = ("A TorchScript file is a program, not just weights: loading it runs the code inside, which can read "
              "and write files. Pass --trust-export (dogcat.load(..., trust=True)) only for a file you made or "
              "trust, or ask for an ONNX or safetensors export, which are data")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported file, checked key by key (it is data from elsewhere); a missing, damaged or
    incomplete one is an :class:`ExportError` naming it."""
    sc = sidecar_path(path)
    if not sc.is_file():
        raise ExportError(
            f"{path} has no sidecar {sc.name} next to it: an exported model needs it for its class names, input "
            f"size and preprocessing. Copy the .json that was exported with it, or export again with "
            f"`dogcat export RUN --format=...` (which writes both; a failed export check writes no sidecar).")
    try:
        meta = read_json(sc, "sidecar", limit=16 << 20)
    except MalformedFile as e:
        raise ExportError(f"{e}; export the model again") from None
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise ExportError(f"sidecar {sc} lacks {', '.join(missing)}; export the model again")
    problem = _sidecar_problem(meta)
    if problem:
        raise ExportError(f"sidecar {sc} is not usable: {problem}; export the model again")
    return meta


def _sidecar_problem(meta: dict[str, Any]) -> str | None:
    """The first value of a sidecar that is not what dogcat writes, or None."""
    from .config import OPTIONS

    names, chans, size = meta["class_names"], meta["in_chans"], meta["image_size"]
    if meta["format"] not in FORMATS:
        return f"format {meta['format']!r} is not one of {', '.join(FORMATS)}"
    if not isinstance(meta["model"], str):
        return "model is not a name"
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        return "class_names is not a list of at least 2 names"
    if chans not in (1, 3) or isinstance(chans, bool):
        return f"in_chans is {chans!r}, not 1 or 3"
    if not isinstance(size, int) or isinstance(size, bool) or size not in OPTIONS["image_size"][1].metadata["range"]:
        return f"image_size is {size!r}"
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == chans and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                                for x in v)):
            return f"{key} is not {chans} finite numbers"
    if 0 in meta["std"]:
        return "std holds a 0"
    if not isinstance(meta["preprocess"], dict):
        return "preprocess is not a mapping"
    if not (isinstance(meta["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])):
        return "sha256 is not a sha256"
    return None


def check_file(path: Path, meta: dict[str, Any], trust: bool = False) -> None:
    """Refuse an exported file that can run code (TorchScript) unless ``trust``, and one whose bytes are not
    the ones its sidecar vouches for (sha256): a swapped or edited file, or a sidecar of another export."""
    if meta["format"] == "torchscript" and not trust:
        raise ExportError(f"refused to load {path}: {TRUST_HINT}")
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise ExportError(f"{path} does not match its sidecar {sidecar_path(path).name}: sha256 {digest[:16]}... "
                          f"but the sidecar says {meta['sha256'][:16]}...; the file was changed or the sidecar "
                          "belongs to another export. Export again, or copy both files together")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"this needs the Python package {module!r}, which is missing: {INSTALL_HINT}") from e


def preprocess_spec(image_size: int, in_chans: int) -> dict[str, Any]:
    """The eval preprocessing as data (what ``dogcat predict`` does to a file; see ``data/transforms.py``)."""
    spec: dict[str, Any] = {"mode": "RGB" if in_chans == 3 else "L", "interpolation": "bilinear", "antialias": True,
                            "scale": "uint8 / 255, then (x - mean) / std per channel", "layout": "NCHW float32"}
    if in_chans == 1:  # grayscale (Fashion-MNIST) models squash the whole picture, as build_paths does
        return {**spec, "resize": [image_size, image_size], "center_crop": None}
    return {**spec, "resize": round(image_size / EVAL_CROP_RATIO), "resize_side": "shorter",
            "center_crop": image_size}


def make_sidecar(lm: Any, fmt: str, path: Path) -> dict[str, Any]:
    """Sidecar contents for a :class:`~dogcat.engine.evaluator.Loaded` model exported to ``path``."""
    from . import __version__

    size, chans, n = lm.cfg.data.image_size, lm.in_chans, len(lm.class_names)
    return {
        "format": fmt, "file": path.name, "model": lm.cfg.model.model, "class_names": list(lm.class_names),
        "num_classes": n, "image_size": size, "in_chans": chans, "channels": "RGB" if chans == 3 else "L",
        "mean": list(lm.mean), "std": list(lm.std), "preprocess": preprocess_spec(size, chans),
        "input": {"name": "input", "shape": ["batch", chans, size, size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", n], "note": "softmax over dim 1 gives the probabilities"},
        "dogcat_version": __version__, "torch_version": torch.__version__,
        "source_checkpoint": str(Path(lm.checkpoint).resolve()),
    }


@contextlib.contextmanager
def _quiet() -> Any:
    """Hush the exporters' progress lines, optimizer logging and deprecation notices (TorchScript is
    deprecated in torch but still asked for); real failures still raise."""
    before = logging.root.manager.disable
    logging.disable(logging.INFO)  # onnxscript's optimizer logs every pass at INFO
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logging.disable(before)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    for module in ("onnx", "onnxscript"):  # torch.onnx.export (dynamo) imports them lazily, with a vaguer error
        _require(module)
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > 1.5e9  # protobuf's 2 GB cap
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


def runner(path: str | Path, meta: dict[str, Any], trust: bool = False) -> Runner:
    """A function ``normalised NCHW batch -> logits`` that runs the exported file, on the CPU. TorchScript
    runs code and is refused unless ``trust`` (see :func:`check_file`); a file that does not load as its
    format is one ExportError line."""
    fmt, path = meta["format"], Path(path)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} in {sidecar_path(path)}; one of {', '.join(FORMATS)}")
    if fmt == "torchscript" and not trust:
        raise ExportError(f"refused to load {path}: {TRUST_HINT}")
    try:
        return _runner(path, fmt, meta)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside onnxruntime / torch / safetensors
        raise ExportError(f"cannot load {path} as {fmt}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e


def _onnx_external_data_inside(path: Path) -> None:
    """An ONNX file may point at tensor files by path: only ones beside it, never ``../`` or absolute paths."""
    onnx = _require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                loc = Path(entry.value)
                if loc.is_absolute() or ".." in loc.parts:
                    raise ExportError(f"refused to load {path}: it reads tensor data from {entry.value!r}, "
                                      "outside its own folder")


def _runner(path: Path, fmt: str, meta: dict[str, Any]) -> Runner:
    if fmt == "onnx":
        ort = _require("onnxruntime")
        _onnx_external_data_inside(path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.detach().cpu().float().numpy()})[0])
    if fmt == "torchscript":  # trusted by the caller (runner checked)
        with _quiet():
            model = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        model = _safetensors_module(path, meta)
    return module_runner(model)


def _safetensors_module(path: Path, meta: dict[str, Any]) -> nn.Module:
    from safetensors.torch import load_model

    from .models import build_model

    model = build_model(meta["model"], len(meta["class_names"]), int(meta["in_chans"]))
    load_model(model, str(path), strict=True)
    return model.eval()


def safetensors_module(path: str | Path, meta: dict[str, Any]) -> nn.Module:
    """The registered model (the sidecar's ``model``) with a safetensors export's weights, on the CPU, in eval
    mode: the torch module that Grad-CAM needs. A file that does not load is one ExportError line."""
    try:
        return _safetensors_module(Path(path), meta)
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside safetensors
        raise ExportError(f"cannot load {path} as safetensors: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from e


def module_runner(model: nn.Module) -> Runner:
    """``normalised NCHW batch -> logits`` of a torch module, on the CPU, without gradients."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.cpu().float()).float()

    return run


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
    from .engine.evaluator import load_model

    fmt = str(fmt).lower()
    if output is not None and not isinstance(output, (str, Path)):
        raise ExportError(f"--output expects a file name, got {output!r}")
    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":  # before loading anything: a missing package is the likeliest failure
        for module in ("onnx", "onnxscript", "onnxruntime"):
            _require(module)
    lm = load_model(target, overrides)
    path = Path(output) if output else lm.out_dir / "export" / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    sc = sidecar_path(path)
    sc.unlink(missing_ok=True)  # a stale sidecar must not vouch for a new, unchecked file
    model = lm.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    size, chans = lm.cfg.data.image_size, lm.in_chans
    example = torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(1))
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)
    big = fmt == "onnx" and need > 1.5e9  # ONNX's external data is named after the file: no temp name then
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
            diff = verify(model, runner(target_file, meta, trust=True), chans, size, atol)  # our own file
            meta["check"] = {"max_abs_diff": diff, "atol": atol, "batch_sizes": list(CHECK_BATCHES)}
            meta["sha256"] = sha256_file(target_file)
            if target_file != path:
                os.replace(target_file, path)
        except BaseException:
            if big:
                path.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
            if target_file != path:
                target_file.unlink(missing_ok=True)
        atomic_write_text(sc, json.dumps(meta, indent=2))  # last: a reader sees no sidecar or a whole one
    return ExportResult(path, sc, fmt, diff)
