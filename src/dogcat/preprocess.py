"""What a trained model expects of its input, as one value: classes, channels, normalisation, size, resize rule,
interpolation and crop fraction.

The data bundle makes it, the checkpoint stores it (``"preprocess"``), loading reads it back, the export
sidecar writes it out for other runtimes, and the Classifier applies it: one object, so the five can never
disagree. It is plain data (no torch); ``data/transforms.py`` turns it into transforms.

Eval resize rules:
- ``crop`` (photos): resize the short side to ``round(size / crop_pct)`` (antialiased, with ``interpolation``),
  centre-crop ``size``: the usual ImageNet evaluation protocol (``crop_pct`` 0.875, bilinear, unless the
  pretrained weights' own configuration says otherwise: timm's ``pretrained_cfg``, see models/external.py);
- ``squash`` (grayscale models such as Fashion-MNIST's, shown photos): resize the whole picture to ``size``.

The task travels here too, because every reader of a model needs it to read the outputs: ``multiclass`` (one
class per image, softmax) or ``multilabel`` (any number of labels per image, a sigmoid per label, and a label
applies when its probability is at least its ``thresholds`` entry, chosen on the validation set: see
docs/multilabel.md). A multi-label model's labels are at most :data:`MAX_LABELS`: an image's label set travels
through the data pipeline as one 64-bit integer, bit ``i`` set for label ``i`` (:meth:`Preprocess.label_text`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .config import DogcatError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
EVAL_CROP_RATIO = 0.875  # resize to size/0.875 then centre-crop: the usual ImageNet eval protocol
RESIZE_RULES = ("crop", "squash")
TASKS = ("multiclass", "multilabel")
MAX_LABELS = 63  # a label set is one int64 bit mask in the loaders (bit 63 would make it negative: "unknown")
DEFAULT_THRESHOLD = 0.5  # a multi-label model's decision threshold before a validation pass chose one
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # torchvision's InterpolationMode names (timm's too)
STD_MIN = 1e-6  # the least std a channel may have: a constant channel's (data/stats.py floors it here); 1e-45 is
# 0 in float32, and (x - mean) / std then infinite


class PreprocessError(DogcatError, ValueError):
    """Stored preprocessing facts (a checkpoint's, a sidecar's) that are damaged or of the wrong shape."""


@dataclass(frozen=True)
class Preprocess:
    """The input a model was trained on. ``resize`` is the eval rule for pictures of any size (module doc)."""

    classes: tuple[str, ...]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    resize: str = "crop"
    interpolation: str = "bilinear"  # of the eval resize (older checkpoints and sidecars: bilinear)
    crop_pct: float = EVAL_CROP_RATIO  # centre crop / resized short side (older ones: 0.875)
    task: str = "multiclass"
    thresholds: tuple[float, ...] | None = None  # multilabel: one per label (None: DEFAULT_THRESHOLD each)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def cutoffs(self) -> tuple[float, ...]:
        """A multi-label model's decision thresholds, one per label."""
        return self.thresholds or (DEFAULT_THRESHOLD,) * len(self.classes)

    def label_text(self, y: int, sep: str = ";") -> str:
        """A sample's label as written in split files and fingerprints: the class name, or for a multi-label
        model the names of the bits set in ``y``, joined by ``sep``."""
        if not self.multilabel:
            return self.classes[y]
        return sep.join(name for i, name in enumerate(self.classes) if y >> i & 1)

    @property
    def resize_to(self) -> int:
        """The short side a ``crop`` picture is resized to before its centre crop (S of the packed cache)."""
        return stored_side(self.size, self.crop_pct)

    @property
    def mode(self) -> str:
        """The PIL mode pictures are converted to."""
        return "RGB" if self.in_chans == 3 else "L"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): what a checkpoint and a sidecar store."""
        d = asdict(self)
        d = {**d, "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std)}
        del d["task"], d["thresholds"]  # a multi-class model's dict stays what it always was
        if self.multilabel:
            d.update(task=self.task, thresholds=list(self.cutoffs))
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "stored preprocessing") -> Preprocess:
        """Rebuild from :meth:`to_dict` output, checking every field: stored files are data from elsewhere."""
        if not isinstance(d, dict):
            raise PreprocessError(f"{source}: the preprocessing is a {type(d).__name__}, not a mapping")
        return cls.checked(d.get("classes"), d.get("in_chans"), d.get("mean"), d.get("std"), d.get("size"),
                           d.get("resize", "crop"), source, interpolation=d.get("interpolation", "bilinear"),
                           crop_pct=d.get("crop_pct", EVAL_CROP_RATIO), task=d.get("task", "multiclass"),
                           thresholds=d.get("thresholds"))

    @classmethod
    def checked(cls, classes: Any, in_chans: Any, mean: Any, std: Any, size: Any, resize: Any = "crop",
                source: str = "preprocessing", *, interpolation: Any = "bilinear", crop_pct: Any = EVAL_CROP_RATIO,
                task: Any = "multiclass", thresholds: Any = None) -> Preprocess:
        """A Preprocess from loose values, or one :class:`PreprocessError` line naming ``source`` and every
        problem."""
        problems = []
        if not (isinstance(classes, (list, tuple)) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            problems.append("classes is not a list of at least 2 names")
        if in_chans not in (1, 3) or isinstance(in_chans, bool):
            problems.append(f"in_chans is {in_chans!r}, not 1 or 3")
        for key, v in (("mean", mean), ("std", std)):
            if not (isinstance(v, (list, tuple)) and len(v) == in_chans
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                            and abs(x) < 1e6 for x in v)):
                problems.append(f"{key} is not {in_chans} finite numbers")
            elif key == "std" and not all(x >= STD_MIN for x in v):
                problems.append(f"std holds a value below {STD_MIN:g} (a channel's spread must be positive: dividing by "
                                "less turns pixels into infinities)")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 16384:
            problems.append(f"size is {size!r}, not a pixel count in [1, 16384]")
        if resize not in RESIZE_RULES:
            problems.append(f"resize is {resize!r}, not one of {', '.join(RESIZE_RULES)}")
        if interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation is {interpolation!r}, not one of {', '.join(INTERPOLATIONS)}")
        if not (isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0.05 <= crop_pct <= 1):
            problems.append(f"crop_pct is {crop_pct!r}, not a fraction in [0.05, 1]")
        problems += _task_problems(task, thresholds, classes)
        if problems:
            raise PreprocessError(f"{source} is not usable: {'; '.join(problems)}")
        cuts = tuple(float(x) for x in thresholds) if task == "multilabel" and thresholds is not None else None
        return cls(tuple(classes), int(in_chans), tuple(float(x) for x in mean), tuple(float(x) for x in std),
                   int(size), str(resize), interpolation=str(interpolation), crop_pct=float(crop_pct), task=str(task),
                   thresholds=cuts)

    @classmethod
    def default(cls, classes: list[str] | tuple[str, ...], in_chans: int, size: int) -> Preprocess:
        """What a model of unknown training (a bare state_dict) gets: ImageNet's statistics for RGB, 0.5 / 0.5
        for grayscale; photos cropped, grayscale squashed."""
        if in_chans == 3:
            return cls(tuple(classes), 3, IMAGENET_MEAN, IMAGENET_STD, size, "crop")
        return cls(tuple(classes), in_chans, (0.5,) * in_chans, (0.5,) * in_chans, size, "squash")

    def spec(self) -> dict[str, Any]:
        """The eval preprocessing written out for other runtimes (the export sidecar's ``preprocess``)."""
        spec: dict[str, Any] = {"mode": self.mode, "interpolation": self.interpolation, "antialias": True,
                                "scale": "uint8 / 255, then (x - mean) / std per channel", "layout": "NCHW float32"}
        if self.resize == "squash":
            return {**spec, "resize": [self.size, self.size], "center_crop": None}
        return {**spec, "resize": self.resize_to, "resize_side": "shorter", "center_crop": self.size,
                "crop_pct": self.crop_pct}


def _task_problems(task: Any, thresholds: Any, classes: Any) -> list[str]:
    """What is wrong with stored ``task`` and ``thresholds`` facts (data from elsewhere)."""
    if task not in TASKS:
        return [f"task is {task!r}, not one of {', '.join(TASKS)}"]
    if task != "multilabel":
        return [] if thresholds is None else ["thresholds are given for a multiclass model"]
    problems = []
    n = len(classes) if isinstance(classes, (list, tuple)) else 0
    if n > MAX_LABELS:
        problems.append(f"{n} labels, more than the {MAX_LABELS} a multi-label model may have")
    if thresholds is not None and not (
            isinstance(thresholds, (list, tuple)) and len(thresholds) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 for x in thresholds)):
        problems.append(f"thresholds is not {n} numbers in [0, 1], one per label")
    return problems


def stored_side(image_size: int, crop_pct: float = EVAL_CROP_RATIO) -> int:
    """S for a network input ``image_size``: the short side the eval ``crop`` rule resizes to."""
    return round(image_size / crop_pct)
