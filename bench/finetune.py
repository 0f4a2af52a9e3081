"""--cache-features against head-only training on the images, as a ratio measured in the same run.

A ResNet-18 with generated weights (saved here and passed as --pretrained=FILE: no download) fine-tunes its head
(--freeze=backbone --augment=none) on generated JPEGs at --size px, with and without --cache-features. Runs
alternate (A B A B ...); the figure is the mean ± std of the per-pair ratios of training epochs per second, the
feature pass included in the cached runs' time (their whole train() call is timed, divided by the epochs). The machine may be
shared: absolute times drift, the ratio much less.

    .venv/bin/python bench/finetune.py [--pairs=3] [--epochs=4] [--size=96] [--images=96]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dogcat import train
from dogcat.models import build_model
from _figures import mean_std, ratio_summary


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("cat", "dog")[i % 2]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--images", type=int, default=96)
    args = ap.parse_args()
    logging.getLogger("dogcat").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "train", args.images)
        torch.manual_seed(0)
        torch.save(build_model("resnet18", 1000).state_dict(), tmp / "r18.pth")  # generated "pretrained" weights
        opts = {"model": "resnet18", "pretrained": str(tmp / "r18.pth"), "train_data_root": str(tmp / "train"),
                "image_size": args.size, "batch_size": 32, "num_workers": 0, "max_epoch": args.epochs,
                "freeze": "backbone", "augment": "none", "val_split": 0.25, "runs_root": str(tmp / "runs"),
                "progress": "none", "debug_file": None, "keep_top_k": 0, "logger": "none"}
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.pairs):
            for cached in (False, True):
                t0 = time.perf_counter()
                train({**opts, "cache_features": cached})
                rates[cached].append(args.epochs / (time.perf_counter() - t0))
        print(f"resnet18 head-only, {args.images} images at {args.size} px, {args.epochs} epochs, {args.pairs} pairs; "
              f"{torch.get_num_threads()} torch threads")
        print(f"  images:            {mean_std(rates[False], '{:.3f}')} epochs/s")
        print(f"  --cache-features:  {mean_std(rates[True], '{:.3f}')} epochs/s")
        print(f"  speed-up: {ratio_summary([b / a for a, b in zip(rates[False], rates[True])])} "
              "(the feature pass counted in the cached runs)")


if __name__ == "__main__":
    main()
