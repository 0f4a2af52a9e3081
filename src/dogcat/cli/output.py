"""How the commands write their results: JSON on stdout, predictions as CSV or JSON."""

from __future__ import annotations

import csv
from typing import Any, TextIO

from ..jsonfiles import to_json


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout; NaN and infinities as null, so that it is valid JSON always."""
    print(to_json(obj, indent=2, default=str))


def write_predictions(rows: list[dict], f: TextIO, fmt: str) -> None:
    """Predictions as JSON (the rows as they are) or CSV: path, class, probability, one column per class (and
    with --top-k=K: top1_class, top1_probability, ... topK_probability); a multi-label model's: path, labels
    (those over their thresholds, joined by ;), one column per label."""
    if fmt == "json":
        f.write(to_json(rows, indent=2) + "\n")
        return
    names = list(next((r["probs"] for r in rows if "probs" in r), {}))
    k = max((len(r.get("top_k", ())) for r in rows), default=0)
    w = csv.writer(f)
    if any("labels" in r for r in rows):
        w.writerow(["path", "labels", *names, "error"])
        for r in rows:
            probs = [f"{r['probs'][n]:.6f}" for n in names] if "probs" in r else [""] * len(names)
            w.writerow([r.get("path", r.get("index", "")), ";".join(r.get("labels", [])), *probs, r.get("error", "")])
        return
    w.writerow(["path", "class", "probability", *names,
                *[f"top{i}_{c}" for i in range(1, k + 1) for c in ("class", "probability")], "error"])
    for r in rows:
        probs = [f"{r['probs'][n]:.6f}" for n in names] if "probs" in r else [""] * len(names)
        top = [v for t in r.get("top_k", []) for v in (t["class"], f"{t['probability']:.6f}")]
        w.writerow([r.get("path", r.get("index", "")), r.get("class", ""),
                    f"{r['probability']:.6f}" if "probability" in r else "", *probs,
                    *(top + [""] * (2 * k - len(top))), r.get("error", "")])
