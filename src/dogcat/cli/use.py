"""The commands that use a trained model or a model's definition: predict, embed, export, explain, summary,
inspect. Like every command they parse nothing themselves: each takes its parsed arguments, calls library
functions (imported when the command runs: torch is loaded only by commands that need it) and prints the
results, tables on stdout and everything else on stderr.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..console import escape, printable
from ..io import atomic_write_text
from .output import print_json, write_predictions


def predict(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..inference import predict as run_predict

    rows = run_predict(a.target, a.paths, ov, trust=a.trust_export)
    output = ov.get("output")
    if output == "-":
        write_predictions(rows, sys.stdout, "csv")
    elif output:
        out, buf = Path(str(output)), io.StringIO(newline="")
        write_predictions(rows, buf, "json" if out.suffix.lower() == ".json" else "csv")
        atomic_write_text(out, buf.getvalue())  # whole or not at all; non-UTF-8 file names kept as they are
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    else:
        width = max([len(escape(r["path"])) for r in rows] + [4])  # names escaped: one row each, no ESC
        multilabel = any("labels" in r for r in rows)
        print(f"{'path':<{width}}  " + ("labels (probability)" if multilabel else f"{'class':<14} probability"
                                        + ("  top-k" if any("top_k" in r for r in rows) else "")))
        for r in rows:
            if "error" in r:
                print(f"{escape(r['path']):<{width}}  {'(unreadable)':<14} {escape(r['error'])}")
            elif multilabel:
                shown = ", ".join(f"{escape(n)} ({r['probs'][n]:.4f})" for n in r["labels"]) or "(none)"
                print(f"{escape(r['path']):<{width}}  {shown}")
            else:
                top = "  " + ", ".join(f"{escape(t['class'])} {t['probability']:.4f}" for t in r["top_k"]) \
                    if "top_k" in r else ""
                print(f"{escape(r['path']):<{width}}  {escape(r['class']):<14} {r['probability']:.4f}{top}")
    return 0


def embed(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat embed RUN PATHS... --output=F``: penultimate-layer features to a .npy or .parquet file."""
    from ..features import embed_rows, write_features

    rows, features = embed_rows(a.target, a.paths, **ov)
    out = write_features(a.output, rows, features)
    print(f"wrote {out}: {features.shape[0]} images x {features.shape[1]} features", file=sys.stderr)
    return 0


def export(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    from ..export import export as run_export

    res = run_export(a.target, a.format, a.output, ov)
    print(f"wrote {res.path} and its sidecar {res.sidecar}")
    print(f"checked: outputs match PyTorch within {res.max_abs_diff:.1e} at batch sizes 1 and 3")
    return 0


def explain(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat explain RUN PATHS...``: a Grad-CAM picture per image; the table of what was written."""
    from ..explanation import explain as run_explain

    done = run_explain(a.run, a.paths, a.output, a.target, a.layer, ov)
    width = max([len(escape(e.path)) for e in done] + [4])  # names escaped: one row each, no ESC
    print(f"{'path':<{width}}  {'explained':<14} {'p':>6}  {'predicted':<14} {'p':>6}  picture")
    for e in done:
        if e.error is not None:
            print(f"{escape(e.path):<{width}}  {'(unreadable)':<14} {escape(e.error)}")
        else:
            print(f"{escape(e.path):<{width}}  {escape(e.target):<14} {e.target_probability:>6.4f}  "
                  f"{escape(e.predicted):<14} {e.probability:>6.4f}  {escape(e.output)}")
    return 0


def summary(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat summary --model=NAME``: per-layer table, parameters, FLOPs and activations per image."""
    from ..models.summary import describe

    for name, value, lo, hi in (("in-chans", a.in_chans, 1, 4096), ("num-classes", a.num_classes, 1, 10**6),
                                ("depth", a.depth, 1, 64)):
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"option --{name}={value} is out of range: allowed is an integer in [{lo}, {hi}]")
    cfg = load_config(ov)
    name, size = cfg.model.model, cfg.data.image_size
    s = describe(name, a.num_classes, a.in_chans, size, a.depth)
    if a.json:
        print_json({"model": name, "num_classes": a.num_classes, **s.to_dict()})
    else:
        print(printable(f"{name}, {a.num_classes} classes, input {size}x{size}x{a.in_chans}\n\n{s.table()}"))
    return 0


def inspect(a: argparse.Namespace, ov: dict[str, Any]) -> int:
    """``dogcat inspect RUN|CKPT|SNAPSHOT``: per-layer parameter (and saved gradient) statistics."""
    import torch

    from ..engine.debug import layer_stats
    from ..models.weights import torch_load

    from ..tracking.folder import RunFolder

    path = Path(a.target)
    if path.is_dir():
        path = RunFolder(path).checkpoint("last")
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    obj = torch_load(path)
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ConfigError(f"{path} holds no state_dict (a {type(obj).__name__}); is it a checkpoint?")
    grads = obj.get("grads") if isinstance(obj.get("grads"), dict) else None
    rows = layer_stats({k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}, grads)
    grads = any("grad_std" in r for r in rows)
    print(f"{path}: {len(rows)} tensors" + ("" if grads else " (no gradients saved: `dogcat ctl RUN debug` saves them)"))
    head = f"{'name':<44} {'shape':<18} {'mean':>10} {'std':>10} {'absmax':>10}"
    print(head + (f" {'grad std':>10} {'grad max':>10}" if grads else ""))
    for r in rows:
        line = (f"{r['name'][:44]:<44} {str(r['shape'])[:18]:<18} {r['mean']:>10.3g} {r['std']:>10.3g} "
                f"{r['absmax']:>10.3g}")
        if grads and "grad_std" in r:
            line += f" {r['grad_std']:>10.3g} {r['grad_absmax']:>10.3g}"
        bad = not r["finite"] or not r.get("grad_finite", True)
        print(line + ("  <- NaN/Inf" if bad else ""))
    return 0
