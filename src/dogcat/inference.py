"""``dogcat.load(...)``: one :class:`Classifier` for a run folder, a checkpoint or an exported model.

    clf = dogcat.load("runs/dogs-vs-cats")            # or a .pt checkpoint, or export/model.onnx (+ .json)
    clf.predict(["photos/", "a.jpg", pil_image], tta=True)

Inputs are preprocessed exactly as ``dogcat predict`` does for files (see ``data/transforms.py``), so a
notebook, the CLI and an exported model give the same numbers.
"""

from __future__ import annotations

import logging
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
from .data import DataError, decode_image, expand_paths
from .data.transforms import eval_transform_for
from .engine.trained import Loaded, load_model
from .exported import (check_file, check_io, module_runner, preprocess_of, read_sidecar, runner, safetensors_module,
                       sidecar_path, sidecar_temperature)
from .models.calibration import probabilities
from .models.tta import FlipTTA
from .preprocess import Preprocess

Input = Union[str, Path, Image.Image, torch.Tensor]
log = logging.getLogger("dogcat")


@dataclass
class Classifier:
    """A trained model plus its preprocessing; ``forward`` maps a normalised NCHW batch to logits."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    pre: Preprocess
    source: Path
    backend: str  # pytorch, onnx, torchscript or safetensors
    cfg: Config = field(default_factory=Config)
    model: nn.Module | None = None  # the torch module (pytorch backend, and a safetensors export's)
    temperature: float = 1.0  # probabilities are softmax(logits / temperature) (dogcat calibrate; 1.0: raw)

    def __post_init__(self) -> None:
        self.transform = eval_transform_for(self.pre)

    @property
    def class_names(self) -> list[str]:
        return list(self.pre.classes)

    @property
    def in_chans(self) -> int:
        return self.pre.in_chans

    @property
    def image_size(self) -> int:
        return self.pre.size

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Class probabilities (N, C) of a normalised batch, ``softmax(output / temperature)``; ``tta`` averages
        with the horizontal flip first (models/calibration.py: the one rule)."""
        forward = FlipTTA(self.forward) if tta else self.forward
        return probabilities(forward(images), self.temperature).cpu()

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
        broken = sum(1 for r in rows if "probs" in r and not all(math.isfinite(p) for p in r["probs"].values()))
        if broken:
            log.warning(f"the model gave NaN or infinite probabilities for {broken} of {len(rows)} images: its weights "
                        f"(or {self.source.name}'s mean and std) are broken; those predictions mean nothing")
        return rows

    def _row(self, p: list[float]) -> dict[str, Any]:
        k = max(range(len(p)), key=p.__getitem__)
        return {"class": self.class_names[k], "probability": p[k], "probs": dict(zip(self.class_names, p))}

    def _expand(self, inputs: Input | Iterable[Input]) -> list[tuple[dict[str, Any], Any]]:
        """``[(row key, source)]``: paths expanded (deduplicated, in order), tensors checked up front."""
        if isinstance(inputs, (str, Path, Image.Image)) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 3):
            inputs = [inputs]
        items: list[tuple[dict[str, Any], Any]] = []
        seen: set[str] = set()
        for i, x in enumerate(inputs):
            if isinstance(x, (str, Path)):
                for f in expand_paths(str(x)):
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
            raw, error = decode_image(src, self.pre.mode)
            if raw is None:
                return key, None, error
            try:
                return key, self.transform(raw), None
            except Exception as e:  # one odd file must not sink the batch: report it like a bad file
                return key, None, f"transform failed: {type(e).__name__}: {e}"
        elif isinstance(src, Image.Image):
            raw = TF.pil_to_tensor(src.convert(self.pre.mode))  # any PIL mode -> the model's channels
        else:
            raw = src
        return key, self.transform(raw), None


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold ``<name>/code/`` (checkpoints written by torch.save do not)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist()[:4096])
    except (zipfile.BadZipFile, OSError):
        return False


def from_export(path: str | Path, overrides: dict[str, Any] | None = None, trust: bool = False) -> Classifier:
    """A :class:`Classifier` for an exported file and its sidecar (``<file>.json``). The sidecar is checked,
    the file must have the sha256 it records, and TorchScript (code) is refused unless ``trust``."""
    path = Path(path)
    meta = read_sidecar(path)
    check_file(path, meta, trust)
    model = safetensors_module(path, meta) if meta["format"] == "safetensors" else None  # weights: a torch module
    run = module_runner(model) if model is not None else runner(path, meta, trust)
    check_io(run, meta, path)  # takes the sidecar's input shape, gives one value per named class
    cfg = load_config(overrides)
    t = sidecar_temperature(meta) if cfg.eval.calibration else 1.0
    return Classifier(run, preprocess_of(meta), path, meta["format"], cfg, model, t)


def from_loaded(lm: Loaded) -> Classifier:
    """A :class:`Classifier` for a loaded PyTorch model (a run folder or a checkpoint)."""
    rt = lm.runtime

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), rt.autocast():
            return lm.model(rt.place(x)).float()

    return Classifier(forward, lm.pre, lm.checkpoint, "pytorch", lm.cfg, lm.model, lm.applied_temperature)


def load(target: str | Path | None, overrides: dict[str, Any] | None = None, trust: bool = False,
         **options: Any) -> Classifier:
    """Load a run folder, a checkpoint, or an exported model (ONNX / TorchScript / safetensors + sidecar).

    ``overrides`` / ``options`` are config options (``checkpoint="last"``, ``model="resnet18"`` for a bare
    state_dict, ``device="cpu"``). Files are data: checkpoints load with ``weights_only``, and a TorchScript
    export, which is a program, is refused unless ``trust=True`` (the CLI's ``--trust-export``)."""
    ov = {**(overrides or {}), **options}
    if target is None:  # --load-model-path names the checkpoint
        return from_loaded(load_model(None, ov))
    path = Path(str(target))
    if path.is_file() and (sidecar_path(path).is_file() or path.suffix.lower() == ".onnx" or is_torchscript(path)):
        if not sidecar_path(path).is_file():
            read_sidecar(path)  # raises, naming the missing sidecar
        return from_export(path, ov, trust)
    return from_loaded(load_model(str(target), ov))


def predict(target: str | Path | None, paths: list[str] | str, overrides: dict[str, Any] | None = None,
            trust: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Class and probabilities for image files, folders or globs, in order; unreadable files come back with an
    error. ``target``: a run folder, a checkpoint, or an exported model with its sidecar (see :func:`load`;
    ``trust``: allow a TorchScript export, which runs code); ``overrides`` / ``options``: config options, e.g.
    ``predict(run, ["a.jpg"], tta=True)``."""
    clf = load(target, {**(overrides or {}), **options}, trust)
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    return clf.predict(paths, tta=clf.cfg.eval.tta, batch_size=clf.cfg.data.batch_size)
