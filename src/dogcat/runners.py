"""Running an exported model (what ``dogcat export`` wrote): its JSON sidecar (checked: it is data from
elsewhere), the file's sha256, and a runner (``normalised NCHW batch -> logits``) per format. ``export.py`` writes
these files; ``inference.py`` turns them into a Classifier. ONNX and safetensors are data; TorchScript is a program and runs only when trusted.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .config import DogcatError
from .io import MalformedFile, one_line, sha256_file
from .jsonfiles import read_json
from .models import build_model
from .models.calibration import temperature_problem
from .preprocess import EVAL_CROP_RATIO, Preprocess, PreprocessError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
INSTALL_HINT = ("install the optional export packages: pip install 'dogcat-vision[export]' "
                "(in this repository: .venv/bin/pip install -e '.[export]')")
Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportError(DogcatError, ValueError):
    """An export that cannot be made, checked or loaded; the message says what to do. The CLI exits 2."""



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
    if meta["format"] not in FORMATS:
        return f"format {meta['format']!r} is not one of {', '.join(FORMATS)}"
    if not isinstance(meta["model"], str):
        return "model is not a name"
    if not isinstance(meta["preprocess"], dict):
        return "preprocess is not a mapping"
    try:
        preprocess_of(meta)
    except PreprocessError as e:
        return str(e)
    if not _is_sha256(meta["sha256"]):
        return "sha256 is not a sha256"
    if "temperature" in meta and (problem := temperature_problem(meta["temperature"])):
        return problem
    ext = meta.get("external_data", {})
    if not (isinstance(ext, dict) and all(isinstance(k, str) and _is_sha256(v) for k, v in ext.items())):
        return "external_data is not a mapping of file names to sha256s"
    return None


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def sidecar_temperature(meta: dict[str, Any]) -> float:
    """The temperature a (checked) sidecar carries: probabilities are softmax(logits / T); 1.0 when it has none
    (an export of an uncalibrated model, or one written before calibration existed)."""
    return float(meta.get("temperature", 1.0))


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    """The sidecar's preprocessing facts (its documented top-level keys) as the one value object."""
    spec = meta["preprocess"] if isinstance(meta.get("preprocess"), dict) else {}
    crop = spec.get("center_crop") is not None
    return Preprocess.checked(meta.get("class_names"), meta.get("in_chans"), meta.get("mean"), meta.get("std"),
                              meta.get("image_size"), "crop" if crop else "squash", "the sidecar's preprocessing",
                              interpolation=spec.get("interpolation", "bilinear"),
                              crop_pct=spec.get("crop_pct", EVAL_CROP_RATIO), task=meta.get("task", "multiclass"),
                              thresholds=meta.get("thresholds"))


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
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"this needs the Python package {module!r}, which is missing: {INSTALL_HINT}") from e


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


def external_data_files(path: Path) -> list[str]:
    """The files an ONNX model reads tensor data from (its "external data"), as written in it."""
    onnx = _require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return list(dict.fromkeys(entry.value for t in model.graph.initializer for entry in t.external_data
                              if entry.key == "location"))


def check_external_data(path: Path, meta: dict[str, Any]) -> None:
    """An ONNX file may point at tensor files by path: only ones beside it (never ``../`` or absolute paths),
    and only ones its sidecar vouches for by sha256 (``external_data``), as it does for the file itself."""
    vouched = meta.get("external_data", {})
    for loc in external_data_files(path):
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts:
            raise ExportError(f"refused to load {path}: it reads tensor data from {loc!r}, outside its own folder")
        if loc not in vouched:
            raise ExportError(f"refused to load {path}: it reads tensor data from {loc!r}, which its sidecar does "
                              "not vouch for (no sha256 of it); export the model again")
        try:
            digest = sha256_file(path.parent / rel)
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot load {path}: its tensor data {loc!r} is unreadable ({e})") from None
        if digest != vouched[loc]:
            raise ExportError(f"{path}'s tensor data {loc!r} does not match its sidecar (sha256 {digest[:16]}..., "
                              f"the sidecar says {vouched[loc][:16]}...): copy the files of one export together")


def check_io(run: Runner, meta: dict[str, Any], path: Path) -> None:
    """Run the model once on a zero batch of the sidecar's input shape: it must take it, and give one value per
    class the sidecar names (a sidecar of another export would otherwise label outputs wrongly)."""
    chans, size, n = int(meta["in_chans"]), int(meta["image_size"]), len(meta["class_names"])
    try:
        out = run(torch.zeros(1, chans, size, size))
    except Exception as e:  # noqa: BLE001 - onnxruntime / torch say "wrong shape" in their own words
        raise ExportError(f"{path} does not take the input its sidecar describes (1 x {chans} x {size} x {size}): "
                          f"{type(e).__name__}: {one_line(e, 200)}; the sidecar belongs to another export") from None
    if tuple(out.shape) != (1, n):
        raise ExportError(f"{path} gives outputs of shape {tuple(out.shape)} for one image, but its sidecar names "
                          f"{n} classes: the sidecar belongs to another export")


def _runner(path: Path, fmt: str, meta: dict[str, Any]) -> Runner:
    if fmt == "onnx":
        ort = _require("onnxruntime")
        check_external_data(path, meta)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name, shape = sess.get_inputs()[0].name, sess.get_inputs()[0].shape
        want = [int(meta["in_chans"]), int(meta["image_size"]), int(meta["image_size"])]
        if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want)):
            raise ExportError(f"{path} takes inputs of shape {shape}, but its sidecar says [batch, "
                              f"{', '.join(map(str, want))}]: the sidecar belongs to another export")
        return lambda x: torch.from_numpy(sess.run(None, {name: x.detach().cpu().float().numpy()})[0])
    if fmt == "torchscript":  # trusted by the caller (runner checked)
        with _quiet():
            model = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        model = _safetensors_module(path, meta)
    return module_runner(model)


def _safetensors_module(path: Path, meta: dict[str, Any]) -> torch.nn.Module:
    from safetensors.torch import load_model

    model = build_model(meta["model"], len(meta["class_names"]), int(meta["in_chans"]))
    load_model(model, str(path), strict=True)
    return model.eval()


def safetensors_module(path: str | Path, meta: dict[str, Any]) -> torch.nn.Module:
    """The registered model (the sidecar's ``model``) with a safetensors export's weights, on the CPU, in eval
    mode: the torch module that Grad-CAM needs. A file that does not load is one ExportError line."""
    try:
        return _safetensors_module(Path(path), meta)
    except RuntimeError as e:  # load_model(strict=True): the weights are not of the model the sidecar describes
        if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
            raise ExportError(f"the weights in {path} do not fit the model its sidecar describes ({meta['model']}, "
                              f"{len(meta['class_names'])} classes, {meta['in_chans']} channels): "
                              f"{one_line(str(e).split(':', 1)[-1], 200)}; the sidecar belongs to another export") from e
        raise ExportError(f"cannot load {path} as safetensors: {type(e).__name__}: {one_line(e)}") from e
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside safetensors
        raise ExportError(f"cannot load {path} as safetensors: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from e


def module_runner(model: torch.nn.Module) -> Runner:
    """``normalised NCHW batch -> logits`` of a torch module, on the CPU, without gradients."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.cpu().float()).float()

    return run
