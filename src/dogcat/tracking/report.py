"""``dogcat report RUN``: ``RUN/report/index.html`` plus PNGs, opened from disk with no server.

Curves come from metrics.jsonl; the confusion matrix, per-class scores and the most confidently wrong
images from a validation pass over the run's own split (``dogcat val RUN --report`` does the same pass).
All links are relative, so the folder can be copied, zipped or attached as it is.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import DogcatError
from ..console import printable
from ..io import atomic_write_figure, atomic_write_text, one_line
from ..metrics import METRICS, ece, per_class
from ..models.gradcam import Explain
from .collect import Collector, Mistake
from .figures import confusion_figure, curves, mistakes_figure, reliability_figure
from .folder import RunFolder
from .manifest import read_manifest
from .listing import fmt_duration, load_run, manifest_summary

log = logging.getLogger("dogcat")

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.row img{width:32%;min-width:320px}.row img.wide{width:auto;max-width:600px}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.note{color:#777}"""


def _e(x: Any) -> str:
    return html.escape(printable(x))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=num>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _save(fig: Any, path: Path) -> str:
    return atomic_write_figure(path, fig).name  # a link planted at the name is replaced, never written through


def write_report(out_dir: Path, run_dir: Path | None, metrics: dict[str, Any] | None = None,
                 collect: Collector | None = None, class_names: list[str] | None = None,
                 mean: Sequence[float] = (), std: Sequence[float] = (), checkpoint: str | None = None,
                 explain: Explain | None = None, train_counts: Sequence[int] | None = None,
                 temperature: float = 1.0) -> Path:
    """Write ``out_dir/report/index.html`` and its PNGs; ``metrics`` / ``collect`` come from a validation
    pass (``None``: a report of the logs only). ``explain`` adds the worst mistakes' Grad-CAM heatmaps for their
    predicted class (``models.gradcam.explainer(model)``); when it fails, the report says why and goes on.
    ``train_counts``: images per class of the training split, for the class-count table. ``temperature``: the
    one stored in the checkpoint (``collect.temperature`` is the one this pass applied). Returns the
    index.html path."""
    folder = RunFolder(out_dir)
    rep = folder.owned(folder.report)  # a real folder: a link to elsewhere is refused, naming it
    info = load_run(run_dir) if run_dir is not None else None
    title = info.name if info else Path(out_dir).name
    parts = [f"<h1>dogcat report: {_e(title)}</h1>"]
    if info:
        best = info.best()
        parts.append(_table(["status", "model", "data", "epochs", "best", "duration"], [[
            info.status, info.config.get("model", "?"), info.data(), len(info.epochs),
            f"{best[0]} {best[1]:.4f} (epoch {best[2]})" if best else "-", fmt_duration(info.duration())]]))
        imgs = [_save(fig, rep / f"{name}.png") for name, fig in curves(RunFolder(info.path).records()).items()]
        parts.append("<h2>Training curves</h2><div class=row>"
                     + "".join(f'<img src="{_e(n)}" alt="{_e(n[:-4])} curve">' for n in imgs) + "</div>")
    if metrics and class_names:
        parts.append(_validation(rep, metrics, collect, class_names, mean, std, checkpoint, explain, train_counts))
        if collect is not None and collect.reliability is not None:
            parts.append(_calibration(rep, collect, temperature))
    else:
        parts.append("<h2>Validation</h2><p class=note>no validation pass (no validation set or no checkpoint): "
                     "curves only</p>")
    if run_dir is not None:
        config = RunFolder(run_dir).config_text()
        parts.append("<h2>Manifest</h2>" + _table(["", "value"], manifest_summary(read_manifest(Path(run_dir)))))
        if config is not None:
            parts.append(f"<h2>Config</h2><pre>{_e(config)}</pre>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)} - dogcat report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    index = rep / "index.html"
    atomic_write_text(index, page)  # UTF-8; a file name that is not stays the bytes it is
    return index


def _validation(rep: Path, metrics: dict[str, Any], collect: Collector | None, class_names: list[str],
                mean: Sequence[float], std: Sequence[float], checkpoint: str | None,
                explain: Explain | None = None, train_counts: Sequence[int] | None = None) -> str:
    """Headline metrics, confusion heatmap, per-class table, grid of the most confidently wrong images (and
    their Grad-CAM heatmaps when ``explain`` is given); a multi-label model's: its per-label table instead."""
    shown = [n for n in METRICS if isinstance(metrics.get(n), (int, float))]  # every metric of the table
    out = [f"<h2>Validation</h2><p>{_e(metrics.get('count', '?'))} images"
           + (f", checkpoint <code>{_e(checkpoint)}</code>" if checkpoint else "") + "</p>",
           _table([name.replace("_", " ") for name in shown], [[format(metrics[n], METRICS[n].fmt) for n in shown]],
                  range(len(shown)))]
    if "per_label" in metrics:
        return "".join(out) + _per_label(metrics["per_label"], train_counts)
    cm = metrics["confusion"]
    name = _save(confusion_figure(cm, class_names), rep / "confusion.png")
    scores = per_class(cm)
    counts = list(train_counts) if train_counts is not None else None
    out.append(f'<h2>Confusion matrix and per-class scores</h2><div class=row><img class=wide src="{name}" '
               f'alt="confusion matrix"><div>' + _table(
                   ["class", "precision", "recall", "F1", "support", *(["train images"] if counts else [])],
                   [[c, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", s["support"],
                     *([counts[i]] if counts else [])] for i, (c, s) in enumerate(zip(class_names, scores))],
                   {1, 2, 3, 4, 5}) + "<p class=note>support: validation images of the class"
               + ("; train images: the training split's class counts" if counts else "") + "</p></div></div>")
    if collect is not None:
        mistakes = collect.mistakes()
        out.append("<h2>Most confidently wrong</h2>")
        if mistakes:
            name = _save(mistakes_figure(mistakes, class_names, mean, std), rep / "mistakes.png")
            shown = class_names if len(class_names) <= 5 else []  # one column per class while that stays readable
            out.append(f'<div class=row><img class=wide src="{name}" alt="most confidently wrong validation images">'
                       "<div>" + _table(["#", "id", "true", "predicted", "p(predicted)", "p(true)",
                                         *[f"p({c})" for c in shown]],
                                        [[i + 1, m.id, class_names[m.label], class_names[m.pred], f"{m.confidence:.4f}",
                                          f"{m.probs[m.label]:.4f}", *[f"{p:.4f}" for p in m.probs[: len(shown)]]]
                                         for i, m in enumerate(mistakes)], range(4, 6 + len(shown)))
                       + "</div></div>")
            if explain is not None:
                out.append(_gradcam(rep, mistakes, class_names, mean, std, explain))
        else:
            out.append("<p>every validation image is classified correctly</p>")
    return "".join(out)


def _per_label(per_label: dict[str, dict[str, Any]], train_counts: Sequence[int] | None) -> str:
    """A multi-label model's table: each label's AP, F1 (precision, recall) at its threshold, and supports."""
    counts = list(train_counts) if train_counts is not None else None

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [[name, num(s.get("ap")), num(s.get("f1")), num(s.get("precision")), num(s.get("recall")),
             num(s.get("threshold")), s.get("support"), *([counts[i]] if counts else [])]
            for i, (name, s) in enumerate(per_label.items())]
    return ("<h2>Per-label scores</h2>" + _table(
        ["label", "AP", "F1", "precision", "recall", "threshold", "support", *(["train images"] if counts else [])],
        rows, range(1, 8)) + "<p class=note>a label is predicted when its probability is at least its threshold, "
        "chosen on this validation set to maximise its F1 (so these F1s are optimistic; a test set's are not); "
        "AP does not depend on the threshold; support: validation images with the label"
        + ("; train images: the training images with it" if counts else "") + "</p>")
def _calibration(rep: Path, collect: Collector, stored: float) -> str:
    """ECE (raw -> calibrated when a temperature applied) and the reliability diagram of this validation pass."""
    applied = collect.temperature
    name = _save(reliability_figure(collect.reliability.tolist(),
                                    collect.raw_reliability.tolist() if collect.raw_reliability is not None else None,
                                    applied), rep / "reliability.png")
    eces = [ece(collect.reliability.tolist())]
    if collect.raw_reliability is not None:
        eces.insert(0, ece(collect.raw_reliability.tolist()))
        head = ["temperature", "ECE raw", "ECE calibrated"]
        note = "probabilities are softmax(logits / T), T fitted on this validation split by `dogcat calibrate`"
    elif stored != 1.0:
        head, note = ["temperature (not applied)", "ECE raw"], ("--no-calibration: the raw softmax; the checkpoint "
                                                                "holds a temperature")
    else:
        head, note = ["temperature", "ECE"], "not calibrated: `dogcat calibrate RUN` fits a temperature"
    row = [f"{stored:.4g}", *[f"{e:.4f}" for e in eces]]
    return (f"<h2>Calibration</h2><div class=row><img class=wide src=\"{name}\" alt=\"reliability diagram\"><div>"
            + _table(head, [row], range(len(row))) + f"<p class=note>{_e(note)}. ECE: |accuracy - confidence| over "
            f"{len(collect.reliability[0])} equal-width confidence bins, weighted by their images.</p></div></div>")


def _gradcam(rep: Path, mistakes: list[Mistake], class_names: list[str], mean: Sequence[float],
             std: Sequence[float], explain: Explain) -> str:
    """The same mistakes with Grad-CAM for the predicted class, or the reason there is none (the report is
    written either way)."""
    try:
        heat = explain(torch.stack([m.image for m in mistakes]), [m.pred for m in mistakes])
        name = _save(mistakes_figure(mistakes, class_names, mean, std, heatmaps=list(heat)),
                     rep / "mistakes_gradcam.png")
    except Exception as e:  # noqa: BLE001 - no captum, no conv layer, a failing backward: a report without maps
        why = one_line(e) if isinstance(e, DogcatError) else f"{type(e).__name__}: {one_line(e)}"
        log.warning(f"report: no Grad-CAM heatmaps of the mistakes: {why}")
        return f"<p class=note>no Grad-CAM heatmaps: {_e(why)}</p>"
    return ("<p>The same images with Grad-CAM for the predicted class: red marks what drove the wrong answer.</p>"
            f'<div class=row><img class=wide src="{name}" alt="Grad-CAM of the most confidently wrong images">'
            "</div>")

