"""Matplotlib figures shared by TensorBoard and the HTML report: curves, confusion matrix, worst mistakes,
reliability diagram.

Figures are built with the object API (``matplotlib.figure.Figure``), never pyplot, so no global backend
or figure registry is touched: safe in a training process, a test, or a machine without a display.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..console import escape, figure_text
from ..metrics import METRICS, VAL, ece
from .collect import Mistake
from .records import EPOCH, LR, STEP, TRAIN_LOSS, VAL_LOSS, is_kind


def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A normalised CHW tensor back to [0, 1] for display."""
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    return (image.float().cpu() * s + m).clamp(0, 1)


def to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an HxWx3 uint8 array (what TensorBoard's add_image takes with HWC)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _show(ax: Any, image: torch.Tensor) -> None:
    arr = image.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(arr)
    ax.set_xticks([])
    ax.set_yticks([])


def confusion_figure(cm: Sequence[Sequence[int]], class_names: list[str]) -> Figure:
    """Heatmap of a confusion matrix, rows = actual, columns = predicted, counts in the cells."""
    a = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    size = min(12.0, 2.5 + 0.6 * n)
    margin = 0.6 + 0.08 * max(len(c) for c in class_names)  # inches for the tick labels
    fig = Figure(figsize=(size + margin, size + margin))
    # fixed margins, not tight_layout: this runs every epoch and tight_layout costs more than the drawing
    fig.subplots_adjust(left=margin / (size + margin), bottom=margin / (size + margin), right=0.97, top=0.93)
    ax = fig.add_subplot()
    # colour by the row's share, so a small class's errors show as clearly as a big one's
    share = a / np.maximum(a.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    labels = [figure_text(escape(c)) for c in class_names]  # valid Unicode, no control characters, no math
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(a[i, j]), ha="center", va="center", fontsize=14 if n <= 4 else 8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("confusion matrix")
    return fig


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """A CHW image in [0, 1] (grey or colour) with an HxW heatmap in [0, 1] blended over it in the jet colours
    (blue: none, red: most): an HxWx3 float array for ``imshow``."""
    from matplotlib import colormaps

    base = (image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]).permute(1, 2, 0).numpy()
    colour = colormaps["jet"](heat.float().clamp(0, 1).numpy())[..., :3]
    return ((1 - alpha) * base + alpha * colour).clip(0, 1)


def explanation_figure(image: torch.Tensor, heat: torch.Tensor, title: str, map_title: str = "Grad-CAM") -> Figure:
    """``dogcat explain``'s picture: the input as the model saw it, then the Grad-CAM heatmap over it."""
    fig = Figure(figsize=(6.4, 3.8))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.84, wspace=0.06)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _show(left, image)
    left.set_title("input", fontsize=9)
    right.imshow(overlay(image, heat))
    right.set_xticks([])
    right.set_yticks([])
    right.set_title(figure_text(map_title)[:80], fontsize=9)
    fig.suptitle(figure_text(title)[:160], fontsize=10)
    return fig


def mistakes_figure(mistakes: list[Mistake], class_names: list[str], mean: Sequence[float],
                    std: Sequence[float], heatmaps: Sequence[torch.Tensor] | None = None) -> Figure:
    """A grid of misclassified images, each titled ``true -> predicted (probability)``; with ``heatmaps`` (one
    HxW map in [0, 1] per image) each is shown with its heatmap over it."""
    n = max(1, len(mistakes))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.9 * cols, 2.3 * rows))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.1, hspace=0.5)
    for k, m in enumerate(mistakes):
        ax = fig.add_subplot(rows, cols, k + 1)
        image = denormalise(m.image, mean, std)
        if heatmaps is None:
            _show(ax, image)
        else:
            ax.imshow(overlay(image, heatmaps[k]))
            ax.set_xticks([])
            ax.set_yticks([])
        names = f"{escape(class_names[m.label])} -> {escape(class_names[m.pred])}"
        ax.set_title(figure_text(f"{names} ({m.confidence:.2f})\n{escape(m.id)}")[:60], fontsize=8)
    if not mistakes:
        fig.add_subplot().text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    return fig


def labelled_grid(mistakes: list[Mistake], class_names: list[str], mean: Sequence[float], std: Sequence[float],
                  tile: int = 112, cols: int = 4) -> np.ndarray:
    """Mistakes as one HxWx3 uint8 image, each tile captioned "T: true" / "P: predicted p". Drawn with PIL:
    a tenth of the matplotlib figure's cost, so TensorBoard can have it every epoch."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font: Any = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        font = ImageFont.load_default()
    strip, pad = 32, 4
    rows = max(1, math.ceil(len(mistakes) / cols))
    canvas = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + strip + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)

    def fit(text: str) -> str:
        while len(text) > 1 and draw.textlength(text, font=font) > tile:
            text = text[:-1]
        return text

    for k, m in enumerate(mistakes):
        x, y = pad + k % cols * (tile + pad), pad + k // cols * (tile + strip + pad)
        arr = (denormalise(m.image, mean, std) * 255).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
        canvas.paste(img.resize((tile, tile), Image.Resampling.NEAREST), (x, y + strip))
        draw.text((x, y), fit(escape(f"T: {class_names[m.label]}")), fill=(0, 90, 0), font=font)
        draw.text((x, y + 15), fit(escape(f"P: {m.confidence:.2f} {class_names[m.pred]}")), fill=(170, 0, 0), font=font)
    return np.asarray(canvas)


def _line(ax: Any, records: list[dict], kind: str, key: str, label: str) -> bool:
    pts = [(r[STEP], r[key]) for r in records if is_kind(r, kind) and isinstance(r.get(key), (int, float))]
    if pts:
        # the lr an epoch ends with is a sample of the step curve, not a curve of its own
        style = "none" if kind == EPOCH and key == LR else "-"
        ax.plot(*zip(*pts), marker="o" if kind == EPOCH else None, markersize=3, linestyle=style, label=label)
    return bool(pts)


def curves(records: list[dict]) -> dict[str, Figure]:
    """Loss, the scores (every higher-is-better metric of the table) and lr against the optimizer step, from
    metrics.jsonl records."""
    scores = [(EPOCH, VAL + n, f"val {n.replace('_', ' ')}") for n, m in METRICS.items() if m.higher_is_better]
    specs = {"loss": [(STEP, TRAIN_LOSS, "train loss (window)"), (EPOCH, TRAIN_LOSS, "train loss (epoch)"),
                      (EPOCH, VAL_LOSS, "val loss")],
             "accuracy": scores,
             "lr": [(STEP, LR, "lr (step)"), (EPOCH, LR, "lr (epoch end)")]}
    out = {}
    for name, lines in specs.items():
        fig = Figure(figsize=(6, 3.6))
        ax = fig.add_subplot()
        drawn = [_line(ax, records, kind, key, label) for kind, key, label in lines]
        if any(drawn):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out[name] = fig
    return out


def reliability_figure(bins: Sequence[Sequence[float]], raw_bins: Sequence[Sequence[float]] | None = None,
                       temperature: float = 1.0) -> Figure:
    """Reliability diagram from per-bin sums ``[counts, confidence sums, correct sums]`` (equal-width bins over
    [0, 1]): accuracy against mean confidence per bin (a calibrated model lies on the diagonal), and below it the
    images in each bin. ``raw_bins``: the same for the uncalibrated model, drawn beside it."""
    fig = Figure(figsize=(6, 6))
    top, bottom = fig.add_subplot(3, 1, (1, 2)), fig.add_subplot(3, 1, 3)
    b = len(bins[0])
    edges = np.linspace(0, 1, b + 1)
    series = [("raw", raw_bins, "#d62728")] if raw_bins is not None else []
    series.append((f"T = {temperature:.3g}" if raw_bins is not None else "model", bins, "#1f77b4"))
    width = 1 / b / len(series)
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for k, (name, sums, colour) in enumerate(series):
        counts, conf, correct = (np.asarray(x, dtype=np.float64) for x in sums)
        seen = counts > 0
        acc = np.divide(correct, counts, out=np.zeros_like(counts), where=seen)
        mean_conf = np.divide(conf, counts, out=np.zeros_like(counts), where=seen)
        left = edges[:-1] + k * width
        label = f"{name}: ECE {ece(sums):.4f}"
        top.bar(left[seen], acc[seen], width=width, align="edge", color=colour, alpha=0.45, edgecolor=colour)
        top.plot(mean_conf[seen], acc[seen], marker="o", markersize=4, color=colour, label=label)
        bottom.bar(left, counts, width=width, align="edge", color=colour, alpha=0.6, label=name)
        if len(series) == 1 or k == len(series) - 1:
            for x, n in zip(left + width / 2, counts):
                if n:
                    bottom.text(x, n, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability ({b} equal-width confidence bins)")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("images")
    if counts.max(initial=0) > 0:
        bottom.set_yscale("symlog", linthresh=1)
    fig.tight_layout()
    return fig
