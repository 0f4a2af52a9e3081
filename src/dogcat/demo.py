"""``dogcat demo`` (and ``make demo``): Fashion-MNIST on the CPU — train the built-in recipe, score the test
set, predict a few images.

Works from any folder of a pip install: the recipe is package data (``dogcat/recipes/fashion-mnist.yaml``), the
run folder goes under ``./runs`` of the current folder (``--runs-root``), and the data is Debian's
``dataset-fashion-mnist`` when installed, else torchvision's download (``--fashion-mnist-root`` names a folder).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from .config import Config, DogcatError, builtin, load_config
from .console import use_for_cli
from .data import fashion_mnist
from .engine.evaluator import test
from .engine.trainer import train
from .inference import predict

RECIPE = "fashion-mnist"
ENV = "demo-fashion-mnist"


def config(overrides: dict[str, Any] | None = None, recipes: list[str] | None = None) -> Config:
    """The demo's config: the built-in recipe, then ``recipes`` in order (``dogcat demo -c A -c B``), then
    ``overrides``; the run is named demo-fashion-mnist unless ``overrides`` name it (``--name``)."""
    recipe = builtin.builtin(RECIPE)
    if recipe is None:
        raise DogcatError(f"this dogcat install lacks its built-in recipe {RECIPE!r} (package data): reinstall "
                          "dogcat-vision")
    return load_config({"env": ENV, **(overrides or {})}, config_file=[recipe, *(recipes or [])])  # type: ignore[list-item]


def run(overrides: dict[str, Any] | None = None, recipes: list[str] | None = None) -> int:
    """Train the demo recipe (``recipes``, then ``overrides`` on top, e.g. ``{"max_epoch": 1}``), test it, predict
    8 test images; results on stdout. Returns the exit status."""
    cfg = config(overrides, recipes)
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    run_dir = str(result.run_dir)
    scored = test(run_dir)

    # A few test images as PNG files, to show `dogcat predict` on ordinary image files.
    images, labels = fashion_mnist.load_split(fashion_mnist.resolve_root(cfg.data.fashion_mnist_root), "test")
    samples = result.run_dir / "samples"
    samples.mkdir(exist_ok=True)
    for i in range(8):
        Image.fromarray(images[i].squeeze(0).numpy(), mode="L").save(samples / f"{i}-{labels[i].item()}.png")
    names = fashion_mnist.CLASS_NAMES
    print("\npredictions (file name: index-true class):")
    for r in predict(run_dir, [str(samples)]):
        true = names[int(Path(r["path"]).stem.split("-")[1])]
        print(f"  {Path(r['path']).name:<10} {r['class']:<12} p={r['probability']:.3f}  (true: {true})")

    acc = scored.get("metrics", {}).get("accuracy", float("nan"))
    print(f"\nFashion-MNIST test accuracy {acc:.4f} after {train_s:.0f} s of training")
    print(f"results in {run_dir}: config.yaml, metrics.jsonl, checkpoints/, submission.csv, test_result.json, "
          "samples/")
    print(f"try: dogcat val {run_dir}   |   dogcat predict {run_dir} {samples}   |   dogcat report {run_dir}")
    return 0


def main() -> int:
    """``python -m dogcat.demo``: the same as ``dogcat demo`` (which takes options too)."""
    if len(sys.argv) > 1:
        print("python -m dogcat.demo takes no arguments; `dogcat demo --help` lists the options of `dogcat demo`",
              file=sys.stderr)
        return 2
    use_for_cli(logging.INFO)  # progress and logs on stderr, the demo's results on stdout
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
