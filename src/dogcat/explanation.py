"""``dogcat explain``: one PNG per image showing what a trained model looked at (Grad-CAM).

    dogcat.explain("runs/dogs-vs-cats", ["photos/"])                  # -> runs/dogs-vs-cats/explain/*.png
    dogcat.explain("best.pt", ["cat.1.jpg"], target_class="dog", output="why-dog/")

Each picture holds the input as the model saw it (resized and cropped as ``dogcat predict`` does) and the
Grad-CAM heatmap of the predicted class (or ``target_class``) over it, titled with the class and its
probability. The heatmaps come from :mod:`dogcat.models.gradcam`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .config import ConfigError
from .console import escape
from .engine.trained import resolve_checkpoint
from .runners import ExportError, read_sidecar, sidecar_path
from .inference import Classifier, Input, is_torchscript, load
from .io import atomic_write_figure, safe_dir
from .models.gradcam import get_layer, gradcam, pick_layer, require_captum
from .tracking.figures import denormalise, explanation_figure

log = logging.getLogger("dogcat")
MAX_BATCH = 16  # images per Grad-CAM pass: the backward pass keeps every activation, unlike predict's batches
NOT_A_MODULE = ("cannot explain {path}: Grad-CAM needs the PyTorch module (to take gradients at an inner layer) "
                "and {fmt} export is a compiled graph without it; explain the run folder or checkpoint it came "
                "from, or a safetensors export of it (`dogcat export RUN --format=safetensors`)")
ARTICLE = {"onnx": "an ONNX", "torchscript": "a TorchScript"}


@dataclass
class Explanation:
    """One image's explanation: where its picture went, the predicted and the explained class, the heatmap
    (H x W in [0, 1], the model's input size); or the error that kept the image from being read."""

    path: str  # the file, or "#<index>" for a PIL image or tensor
    output: Path | None = None
    predicted: str | None = None
    probability: float | None = None
    target: str | None = None
    target_probability: float | None = None
    layer: str | None = None
    heatmap: torch.Tensor | None = None
    error: str | None = None


def refuse_compiled_export(path: Path) -> None:
    """ONNX and TorchScript exports carry no torch module to take gradients in: one line saying so."""
    if not path.is_file():
        return
    fmt = None
    if sidecar_path(path).is_file():
        fmt = read_sidecar(path)["format"]
    elif path.suffix.lower() == ".onnx":
        fmt = "onnx"
    elif is_torchscript(path):
        fmt = "torchscript"
    if fmt in ARTICLE:
        raise ExportError(NOT_A_MODULE.format(path=path, fmt=ARTICLE[fmt]))


def class_index(target: str | int, class_names: Sequence[str]) -> int:
    """``--target``: a class name, else an index into the classes."""
    if str(target) in class_names:
        return list(class_names).index(str(target))
    if re.fullmatch(r"\d+", str(target).strip()) and int(target) < len(class_names):
        return int(target)
    raise ConfigError(f"--target={target!r} is not one of the model's classes: {', '.join(class_names)} "
                      f"(or an index 0..{len(class_names) - 1})")


def default_output(target: str | Path, overrides: dict[str, Any]) -> Path:
    """``RUN/explain`` for a run folder (or a checkpoint in its ``checkpoints/``), else ``explain/`` beside the
    file."""
    ckpt, run = resolve_checkpoint(target, overrides)
    return (run or ckpt.parent) / "explain"


def _file_name(key: dict[str, Any], suffix: str, taken: set[str]) -> str:
    stem = Path(key["path"]).stem if "path" in key else f"image-{key['index']}"
    name, n = f"{stem}{suffix}.png", 2
    while name in taken:  # photos/a/1.jpg and photos/b/1.jpg
        name, n = f"{stem}-{n}{suffix}.png", n + 1
    taken.add(name)
    return name


def explain(target: str | Path, paths: Input | Iterable[Input], output: str | Path | None = None,
            target_class: str | int | None = None, layer: str | None = None,
            overrides: dict[str, Any] | None = None, **options: Any) -> list[Explanation]:
    """Write ``<image name>.gradcam.png`` (``.gradcam-<class>.png`` with ``target_class``) for each image into
    ``output`` (default ``RUN/explain``) and return one :class:`Explanation` per image, in input order.

    ``target``: a run folder, a checkpoint, or a safetensors export with its sidecar (ONNX and TorchScript are
    refused: they have no torch module). ``paths``: files, folders, globs (or PIL images, CHW tensors).
    ``layer``: the module Grad-CAM looks at (default: :func:`~dogcat.models.gradcam.pick_layer`).
    ``overrides`` / ``options``: config options, e.g. ``device="cpu"``, ``checkpoint="last"``."""
    ov = {**(overrides or {}), **options}
    require_captum()  # before anything loads: the likeliest failure on a fresh install
    if target is not None:
        refuse_compiled_export(Path(str(target)))
    clf = load(target, ov)
    if clf.model is None:  # refused above already; a safety net for a backend added later
        raise ExportError(NOT_A_MODULE.format(path=clf.source, fmt=ARTICLE.get(clf.backend, f"a {clf.backend}")))
    wanted = class_index(target_class, clf.class_names) if target_class is not None else None
    items = clf._expand(paths)
    layer = layer or pick_layer(clf.model, (clf.in_chans, clf.image_size, clf.image_size))
    get_layer(clf.model, layer)  # a wrong --layer: refused before any image is read
    out_dir = Path(output) if output else safe_dir(default_output(target, ov))  # ours: a real folder, no link
    suffix = ".gradcam" + ("-" + re.sub(r"[^\w.-]+", "_", clf.class_names[wanted]) if wanted is not None else "")
    taken: set[str] = set()
    done: list[Explanation] = []
    batch = max(1, min(MAX_BATCH, clf.cfg.data.batch_size))
    for start in range(0, len(items), batch):
        chunk = [clf._prepare(item) for item in items[start:start + batch]]
        good = [(key, image) for key, image, _ in chunk if image is not None]
        pictures = iter(_explain_batch(clf, good, wanted, layer) if good else [])
        for key, image, error in chunk:
            label = key.get("path", f"#{key.get('index')}")
            if image is None:
                log.warning(f"cannot explain {label}: {error}")
                done.append(Explanation(label, error=error))
                continue
            e, fig = next(pictures)
            e.output = out_dir / _file_name(key, suffix, taken)
            atomic_write_figure(e.output, fig)
            done.append(e)
    written = sum(e.output is not None for e in done)
    log.info(f"wrote {written} Grad-CAM picture{'s' * (written != 1)} to {out_dir} (layer {layer})")
    return done


def _explain_batch(clf: Classifier, good: list[tuple[dict[str, Any], torch.Tensor]], wanted: int | None,
                   layer: str) -> list[tuple[Explanation, Any]]:
    """Probabilities, heatmaps and figures of one batch of prepared (normalised) images."""
    images = torch.stack([image for _, image in good])
    probs = clf.probabilities(images)
    preds = probs.argmax(1).tolist()
    targets = [wanted if wanted is not None else p for p in preds]
    heat = gradcam(clf.model, images, targets, layer)  # type: ignore[arg-type]  # checked by the caller
    out = []
    names = clf.class_names
    for (key, image), p, t, h, row in zip(good, preds, targets, heat, probs.tolist()):
        label = key.get("path", f"#{key.get('index')}")
        title = f"{escape(Path(label).name)}: predicted {escape(names[p])} ({row[p]:.2f})"  # names: one line each
        map_title = f"Grad-CAM of {escape(names[t])} ({row[t]:.2f})" + ("" if h.any() else ": no evidence for it here")
        fig = explanation_figure(denormalise(image, clf.pre.mean, clf.pre.std), h, title, map_title)
        e = Explanation(label, None, names[p], row[p], names[t], row[t], layer, h)
        out.append((e, fig))
    return out
