"""``dogcat.load(...)``: one :class:`Classifier` for a run folder, a checkpoint or an exported model.

    clf = dogcat.load("runs/dogs-vs-cats")            # or a .pt checkpoint, or export/model.onnx (+ .json)
    clf.predict(["photos/", "a.jpg", pil_image], tta=True)

Inputs are preprocessed exactly as ``dogcat predict`` does for files (see ``data/transforms.py``), so a
notebook, the CLI and an exported model give the same numbers.
"""

from __future__ import annotations

import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .config import Config, load_config
from .data import DataError, decode_image
from .data.transforms import eval_transform, squash_transform

Input = Union[str, Path, Image.Image, torch.Tensor]


class FlipTTA(nn.Module):
    """Test-time augmentation: log of the mean of the probabilities of ``x`` and its horizontal flip.

    Log-probabilities, not probabilities, so that code that applies softmax / log-softmax to "logits"
    (val metrics, ``test``) gets exactly the averaged probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.model(x).float().log_softmax(1)
        b = self.model(x.flip(-1)).float().log_softmax(1)
        return torch.logaddexp(a, b) - math.log(2)


def with_tta(model: nn.Module, tta: bool) -> nn.Module:
    return FlipTTA(model) if tta else model


@dataclass
class Classifier:
    """A trained model plus its preprocessing; ``forward`` maps a normalised NCHW batch to logits."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: bool  # resize the short side + centre crop (photos), else squash to a square (grayscale models)
    source: Path
    backend: str  # pytorch, onnx, torchscript or safetensors
    cfg: Config = field(default_factory=Config)
    model: nn.Module | None = None  # the torch module (pytorch backend, and a safetensors export's)

    def __post_init__(self) -> None:
        tf = eval_transform if self.crop else squash_transform
        self.transform = tf(self.image_size, tuple(self.mean), tuple(self.std))
        self.mode = "RGB" if self.in_chans == 3 else "L"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Class probabilities (N, C) of a normalised batch; ``tta`` averages with the horizontal flip."""
        probs = self.forward(images).float().softmax(1)
        if tta:
            probs = (probs + self.forward(images.flip(-1)).float().softmax(1)) / 2
        return probs.cpu()

    def predict(self, inputs: Input | Iterable[Input], tta: bool = False, batch_size: int = 32,
                num_threads: int | None = None) -> list[dict[str, Any]]:
        """One dict per image, in input order: ``path`` (files) or ``index`` (images, tensors), ``class``,
        ``probability``, ``probs`` {class: p}. Paths may be files, folders (recursive) or globs; an
        unreadable file gives ``{"path", "error"}``. Tensors are CHW, uint8 (or float in [0, 1])."""
        items = self._expand(inputs)
        threads = num_threads or min(4, os.cpu_count() or 1)  # decoding and resizing release the GIL
        rows: list[dict[str, Any]] = []
        bs = max(1, batch_size)
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(items), bs):
                chunk = list(pool.map(self._prepare, items[start:start + bs]))
                good = [c for c in chunk if c[1] is not None]
                probs = self.probabilities(torch.stack([c[1] for c in good]), tta).tolist() if good else []
                it = iter(probs)
                for key, image, error in chunk:
                    rows.append(key | ({"error": error} if image is None else self._row(next(it))))
        return rows

    def _row(self, p: list[float]) -> dict[str, Any]:
        k = max(range(len(p)), key=p.__getitem__)
        return {"class": self.class_names[k], "probability": p[k], "probs": dict(zip(self.class_names, p))}

    def _expand(self, inputs: Input | Iterable[Input]) -> list[tuple[dict[str, Any], Any]]:
        """``[(row key, source)]``: paths expanded (deduplicated, in order), tensors checked up front."""
        from .data import _expand

        if isinstance(inputs, (str, Path, Image.Image)) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 3):
            inputs = [inputs]
        items: list[tuple[dict[str, Any], Any]] = []
        seen: set[str] = set()
        for i, x in enumerate(inputs):
            if isinstance(x, (str, Path)):
                for f in _expand(str(x)):
                    if f not in seen:
                        seen.add(f)
                        items.append(({"path": f}, f))
            elif isinstance(x, Image.Image):
                items.append(({"index": i}, x))
            elif isinstance(x, torch.Tensor):
                self._check_tensor(x, i)
                items.append(({"index": i}, x))
            else:
                raise DataError(f"input {i} is a {type(x).__name__}; give file paths, folders, globs, PIL images "
                                "or CHW tensors")
        if not items:
            raise DataError("no images to predict: give image files, folders or globs such as 'photos/*.jpg'")
        return items

    def _check_tensor(self, x: torch.Tensor, i: int) -> None:
        if x.ndim != 3 or x.shape[0] != self.in_chans:
            kind = "RGB" if self.in_chans == 3 else "grayscale"
            hint = "x.expand(3, -1, -1) makes a grayscale tensor RGB" if self.in_chans == 3 else \
                "torchvision.transforms.v2.functional.rgb_to_grayscale(x) makes an RGB tensor grayscale"
            raise DataError(
                f"input {i}: a tensor of shape {tuple(x.shape)}, but {self.source.name} takes {self.in_chans}-channel "
                f"({kind}) CHW images. Convert it first ({hint}), or pass a PIL image or a file path, which are "
                f"converted for you")

    def _prepare(self, item: tuple[dict[str, Any], Any]) -> tuple[dict[str, Any], torch.Tensor | None, str | None]:
        key, src = item
        if isinstance(src, str):
            raw, error = decode_image(src, self.mode)
            if raw is None:
                return key, None, error
            try:
                return key, self.transform(raw), None
            except Exception as e:  # one odd file must not sink the batch: report it like a bad file
                return key, None, f"transform failed: {type(e).__name__}: {e}"
        elif isinstance(src, Image.Image):
            raw = TF.pil_to_tensor(src.convert(self.mode))  # any PIL mode -> the model's channels
        else:
            raw = src
        return key, self.transform(raw), None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold ``<name>/code/`` (checkpoints written by torch.save do not)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist()[:4096])
    except (zipfile.BadZipFile, OSError):
        return False


def from_export(path: str | Path, overrides: dict[str, Any] | None = None, trust: bool = False) -> Classifier:
    """A :class:`Classifier` for an exported file and its sidecar (``<file>.json``). The sidecar is checked,
    the file must have the sha256 it records, and TorchScript (code) is refused unless ``trust``."""
    from .export import check_file, module_runner, read_sidecar, runner, safetensors_module

    path = Path(path)
    meta = read_sidecar(path)
    check_file(path, meta, trust)
    model = safetensors_module(path, meta) if meta["format"] == "safetensors" else None  # weights: a torch module
    run = module_runner(model) if model is not None else runner(path, meta, trust)
    return Classifier(run, list(meta["class_names"]), int(meta["in_chans"]), int(meta["image_size"]),
                      tuple(meta["mean"]), tuple(meta["std"]), meta["preprocess"].get("center_crop") is not None,
                      path, meta["format"], load_config(overrides), model)


def from_loaded(lm: Any) -> Classifier:
    """A :class:`Classifier` for a :class:`~dogcat.engine.evaluator.Loaded` PyTorch model."""
    from .engine.runtime import autocast, memory_format

    device = next(lm.model.parameters()).device
    fmt = memory_format(lm.cfg.train.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, lm.cfg.train.precision):
            return lm.model(x.to(device, memory_format=fmt)).float()

    return Classifier(forward, list(lm.class_names), lm.in_chans, lm.cfg.data.image_size, tuple(lm.mean),
                      tuple(lm.std), lm.in_chans != 1, lm.checkpoint, "pytorch", lm.cfg, lm.model)


def load(target: str | Path | None, overrides: dict[str, Any] | None = None, trust: bool = False,
         **options: Any) -> Classifier:
    """Load a run folder, a checkpoint, or an exported model (ONNX / TorchScript / safetensors + sidecar).

    ``overrides`` / ``options`` are config options (``checkpoint="last"``, ``model="resnet18"`` for a bare
    state_dict, ``device="cpu"``). Files are data: checkpoints load with ``weights_only``, and a TorchScript
    export, which is a program, is refused unless ``trust=True`` (the CLI's ``--trust-export``)."""
    from .engine.evaluator import load_model
    from .export import read_sidecar, sidecar_path

    ov = {**(overrides or {}), **options}
    if target is None:  # --load-model-path names the checkpoint
        return from_loaded(load_model(None, ov))
    path = Path(str(target))
    if path.is_file() and (sidecar_path(path).is_file() or path.suffix.lower() == ".onnx" or _is_torchscript(path)):
        if not sidecar_path(path).is_file():
            read_sidecar(path)  # raises, naming the missing sidecar
        return from_export(path, ov, trust)
    return from_loaded(load_model(str(target), ov))
