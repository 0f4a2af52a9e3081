"""``make demo``: Fashion-MNIST on the CPU — train the recipe, score the test set, predict a few images."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PIL import Image

from .console import use_for_cli
from .engine.evaluator import test
from .engine.trainer import train
from .inference import predict
from .data import fashion_mnist

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "fashion-mnist.yaml"


def main() -> int:
    use_for_cli(logging.INFO)  # progress and logs on stderr, the demo's results on stdout
    recipe = RECIPE if RECIPE.is_file() else Path("configs/fashion-mnist.yaml")
    t0 = time.perf_counter()
    result = train(recipe, env="demo-fashion-mnist")
    train_s = time.perf_counter() - t0
    run = str(result.run_dir)
    scored = test(run)

    # A few test images as PNG files, to show `dogcat predict` on ordinary image files.
    images, labels = fashion_mnist.load_split(fashion_mnist.resolve_root(None), "test")
    samples = result.run_dir / "samples"
    samples.mkdir(exist_ok=True)
    for i in range(8):
        Image.fromarray(images[i].squeeze(0).numpy(), mode="L").save(samples / f"{i}-{labels[i].item()}.png")
    names = fashion_mnist.CLASS_NAMES
    print("\npredictions (file name: index-true class):")
    for r in predict(run, [str(samples)]):
        true = names[int(Path(r["path"]).stem.split("-")[1])]
        print(f"  {Path(r['path']).name:<10} {r['class']:<12} p={r['probability']:.3f}  (true: {true})")

    acc = scored.get("metrics", {}).get("accuracy", float("nan"))
    print(f"\nFashion-MNIST test accuracy {acc:.4f} after {train_s:.0f} s of training")
    print(f"results in {run}: config.yaml, metrics.jsonl, checkpoints/, submission.csv, test_result.json, samples/")
    print(f"try: .venv/bin/dogcat val {run}   |   .venv/bin/dogcat predict {run} {samples}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
