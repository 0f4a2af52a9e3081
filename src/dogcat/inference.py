"""``dogcat.load(...)``: one :class:`Classifier` for a run folder, a checkpoint or an exported model.

    clf = dogcat.load("runs/dogs-vs-cats")            # or a .pt checkpoint, or export/model.onnx (+ .json)
    clf.predict(["photos/", "a.jpg", pil_image], tta=True)

Inputs are preprocessed exactly as ``dogcat predict`` does for files (see ``data/transforms.py``), so a
notebook, the CLI and an exported model give the same numbers.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .config import Config, ConfigError, load_config
from .data import DataError, decode_image, expand_paths
from .data.given import as_image, match_channels
from .data.transforms import eval_transform_for
from .engine.trained import Loaded, load_model
from .engine.result import Result
from .engine.trainer import train as train_run
from .models.calibration import probabilities
from .runners import (check_file, check_io, module_runner, preprocess_of, read_sidecar, runner, safetensors_module,
                      sidecar_path, sidecar_temperature)
from .models.tta import FlipTTA
from .preprocess import Preprocess

Input = Union[str, Path, Image.Image, torch.Tensor, np.ndarray]
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

    def __repr__(self) -> str:
        """One line: what it is, its classes, its input and where it runs (a dataclass's repr would print the
        whole module and config)."""
        names = self.class_names
        shown = names if len(names) <= 6 else [*names[:5], f"... ({len(names)} classes)"]
        return (f"Classifier(model={self.model_name}, classes={shown}, image_size={self.image_size}, "
                f"in_chans={self.in_chans}, device={self.device}, backend={self.backend}, source={str(self.source)!r})")

    @property
    def model_name(self) -> str:
        """The architecture: the run's model option (``custom:...`` for your own module), else the class's."""
        if self.backend == "pytorch":
            return self.cfg.model.model
        return type(self.model).__name__ if self.model is not None else self.source.name

    @property
    def device(self) -> str:
        param = next(self.model.parameters(), None) if self.model is not None else None
        return str(param.device) if param is not None else "cpu"

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
        """Class probabilities (N, C) of a normalised batch, ``softmax(output / temperature)`` (a multi-label
        model's: one sigmoid per label); ``tta`` averages with the horizontal flip first (models/calibration.py:
        the one rule)."""
        forward = FlipTTA(self.forward, self.pre.multilabel) if tta else self.forward
        return probabilities(forward(images), self.temperature, self.pre.multilabel).cpu()

    def predict(self, inputs: Input | Iterable[Input], tta: bool = False, batch_size: int = 32,
                num_threads: int | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
        """One dict per image, in input order: ``path`` (files) or ``index`` (images, tensors, arrays),
        ``class``, ``probability``, ``probs`` {class: p}; a multi-label model's: ``labels`` (those whose
        probability reaches their threshold, in label order) and ``probs`` {label: p}. With ``top_k=K`` also
        ``top_k``: the K most probable ``{"class", "probability"}``, most probable first (ties: the earlier
        class). Paths may be files, folders (recursive) or globs; an unreadable file gives ``{"path", "error"}``.
        Tensors are CHW, numpy arrays HWC (a 4-D array is a batch, NHWC), uint8 or float in [0, 1]; an array or
        PIL image of other channels is converted (grey to RGB, RGB to grey) as a file would be."""
        self._check_top_k(top_k)
        keys, probs = self.run_batches(inputs, lambda x: self.probabilities(x, tta), batch_size, num_threads)
        rows = [key if p is None else key | self._row(p.tolist(), top_k) for key, p in zip(keys, probs)]
        broken = sum(1 for r in rows if "probs" in r and not all(math.isfinite(p) for p in r["probs"].values()))
        if broken:
            log.warning(f"the model gave NaN or infinite probabilities for {broken} of {len(rows)} images: its weights "
                        f"(or {self.source.name}'s mean and std) are broken; those predictions mean nothing")
        return rows

    def run_batches(self, inputs: Input | Iterable[Input], forward: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int = 32, num_threads: int | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
        """``(keys, outputs)``, one each per image in input order: ``forward`` of each batch of preprocessed
        images, row by row as numpy (None, and ``error`` in the key, for an unreadable file). What
        :meth:`predict` and ``dogcat.embed`` share."""
        items = self._expand(inputs)
        threads = num_threads or min(4, os.cpu_count() or 1)  # decoding and resizing release the GIL
        keys: list[dict[str, Any]] = []
        outputs: list[Any] = []
        bs = max(1, batch_size)
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(items), bs):
                chunk = list(pool.map(self._prepare, items[start:start + bs]))
                good = [c[1] for c in chunk if c[1] is not None]
                it = iter(forward(torch.stack(good)).detach().float().cpu().numpy() if good else [])
                for key, image, error in chunk:
                    keys.append(key | {"error": error} if image is None else key)
                    outputs.append(None if image is None else next(it))
        return keys, outputs

    def _row(self, p: list[float], top_k: int | None = None) -> dict[str, Any]:
        order = sorted(range(len(p)), key=lambda i: (-p[i], i))  # most probable first; a tie keeps class order
        if self.pre.multilabel:
            row = {"labels": [n for n, x, t in zip(self.class_names, p, self.pre.cutoffs) if x >= t],
                   "probs": dict(zip(self.class_names, p))}
        else:
            row = {"class": self.class_names[order[0]], "probability": p[order[0]],
                   "probs": dict(zip(self.class_names, p))}
        if top_k:
            row["top_k"] = [{"class": self.class_names[i], "probability": p[i]} for i in order[:top_k]]
        return row

    def _check_top_k(self, top_k: int | None) -> None:
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= len(self.class_names)):
            raise ConfigError(f"option top_k={top_k!r} is not allowed: this model has {len(self.class_names)} "
                              f"classes, so K is an integer in [1, {len(self.class_names)}]")

    def _expand(self, inputs: Input | Iterable[Input]) -> list[tuple[dict[str, Any], Any]]:
        """``[(row key, source)]``: paths expanded (deduplicated, in order), tensors checked up front."""
        if isinstance(inputs, (str, Path, Image.Image)) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 3) \
                or (isinstance(inputs, np.ndarray) and inputs.ndim in (2, 3)):
            inputs = [inputs]  # one image; a 4-D numpy array (NHWC) or a list iterates over its images
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
            elif isinstance(x, np.ndarray):
                items.append(({"index": i}, match_channels(as_image(x, where=f"input {i}"), self.in_chans,
                                                           f"input {i}")))
            elif isinstance(x, torch.Tensor):
                self._check_tensor(x, i)
                items.append(({"index": i}, x))
            else:
                raise DataError(f"input {i} is a {type(x).__name__}; give file paths, folders, globs, PIL images, "
                                "numpy HWC arrays or CHW tensors")
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
    export, which is a program, is refused unless ``trust=True`` (the CLI's ``--trust-export``).
    ``model=`` an ``nn.Module`` loads the weights into it: a run of your own module needs it again
    (``dogcat.load(RUN, model=Net())``), since a checkpoint names its class but nothing in it is imported."""
    ov = {**(overrides or {}), **options}
    module = ov.pop("model") if isinstance(ov.get("model"), nn.Module) else None
    if target is None:  # --load-model-path names the checkpoint
        return from_loaded(load_model(None, ov, module))
    path = Path(str(target))
    if path.is_file() and (sidecar_path(path).is_file() or path.suffix.lower() == ".onnx" or is_torchscript(path)):
        if not sidecar_path(path).is_file():
            read_sidecar(path)  # raises, naming the missing sidecar
        return from_export(path, ov, trust)
    return from_loaded(load_model(str(target), ov, module))


def predict(target: str | Path | None, paths: list[str] | str, overrides: dict[str, Any] | None = None,
            trust: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Class and probabilities for image files, folders or globs, in order; unreadable files come back with an
    error. ``target``: a run folder, a checkpoint, or an exported model with its sidecar (see :func:`load`;
    ``trust``: allow a TorchScript export, which runs code); ``overrides`` / ``options``: config options, e.g.
    ``predict(run, ["a.jpg"], tta=True, top_k=3)``; ``paths`` may also hold PIL images and numpy HWC arrays."""
    clf = load(target, {**(overrides or {}), **options}, trust)
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    return clf.predict(paths, tta=clf.cfg.eval.tta, batch_size=clf.cfg.data.batch_size, top_k=clf.cfg.eval.top_k)


def train(cfg: Any = None, /, **kwargs: Any) -> Result:
    """``dogcat.train``: :func:`dogcat.engine.trainer.train` (every argument the same), whose result can also
    ``load()`` itself as a :class:`Classifier` (``result.load().predict(...)``); it lives here because the
    engine, a layer below, cannot build one."""
    module = kwargs.get("model") if isinstance(kwargs.get("model"), nn.Module) else None
    result = train_run(cfg, **kwargs)

    def opener(**options: Any) -> Classifier:
        return load(result.run_dir, **options, **({"model": copy.deepcopy(module)} if module is not None else {}))

    result.opener = opener
    return result
