"""Data-loading throughput: the template's pipeline against dogcat's, on the same files, in the same run.

    .venv/bin/python bench/data.py [--images=2000] [--workers=N] [--rounds=5] [--batch-size=128] [--threads=1]

Generates (once, into ~/.cache/dogcat/bench/) a Kaggle-layout folder of photo-like JPEGs, 300-500 px, then
measures images per second per core, each through a DataLoader made with the same worker setting, of:

  a  the template: PIL.Image.open + Resize(256) + RandomResizedCrop(224) + flip + ToTensor + Normalize, per sample
     (torchvision.transforms v1; the pytorch-book chapter's Scale(256) is today's Resize(256))
  b  dogcat without a cache: the trainer's loader over ImageFiles (simplejpeg, v2 on uint8 tensors) in worker
     processes, then ``batch_transform`` (normalise) in the main process, as the trainer runs it
  c  dogcat from the packed cache (built once per run, timed separately, memory-mapped as a big set would be):
     the trainer's loader, which cuts the crops on threads in the main process, then ``batch_transform``
  d  c without OpenCV (what an install without the ``[fast]`` extra runs): torch's antialiased resize, on one
     thread (torch's resize on the loader's threads would nest OpenMP teams); c/d is OpenCV's gain

Two figures per pipeline: images per second per core (wall clock, divided by the cores this process may use)
and images per CPU-second (main process + workers, from /proc): the same thing on an idle machine, and the
steadier one when other processes share the cores. The main process runs one torch thread (``--threads``):
an OpenMP team in it would spin against the busy workers.
Rounds alternate a, b, c, d so that a noisy neighbour hits all four alike. Each pipeline's figure is the mean ±
std over the rounds, and each ratio the mean ± std of the rounds' own ratios (with their median and range).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

import dogcat.data as D
from dogcat.config import DataConfig
from _figures import mean_std, ratio_summary

ROOT = Path("~/.cache/dogcat/bench").expanduser()


def photo(cls: int, h: int, w: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour blobs + the class's stripes + a little noise, slightly blurred: JPEGs of photo-like size."""
    blobs = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    y, x = np.mgrid[0:h, 0:w]
    coord = (y / h, x / w)[cls]
    stripes = (np.sin(2 * np.pi * 5 * coord + rng.uniform(0, 6)) > 0)[..., None] * 50.0
    arr = np.asarray(blobs, np.float32) * 0.75 + stripes + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def make_data(n: int) -> Path:
    """``n`` images as ``train/{cat,dog}.N.jpg``, written once (a marker file says they are complete)."""
    train = ROOT / f"kaggle-{n}" / "train"
    if (train.parent / "COMPLETE").is_file():
        return train
    train.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"generating {n} JPEGs in {train} (once)", flush=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(300, 501, 2))
        photo(i % 2, h, w, rng).save(train / f"{('cat', 'dog')[i % 2]}.{i // 2}.jpg", quality=90)
    (train.parent / "COMPLETE").write_text("ok\n")
    return train


class TemplatePipeline(Dataset):
    """pytorch-book ch. 9's DogCat dataset, train split: PIL decode and transforms v1, per sample."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.transform = T.Compose([T.Resize(256), T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data = Image.open(self.files[i])  # as the template has it: no convert (these JPEGs are RGB), no close
        return self.transform(data), int(self.files[i].name.startswith("dog"))


def cpu_seconds(loader: DataLoader) -> float:
    """CPU time so far of this process and the loader's worker processes (Linux: /proc/PID/stat)."""
    total = time.process_time()
    for w in getattr(getattr(loader, "_iterator", None), "_workers", []):
        with open(f"/proc/{w.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def rate(loader: DataLoader, finish=None) -> tuple[float, float]:
    """(images per second, images per CPU-second of main + workers) over one epoch after its first batch:
    worker start-up is not throughput."""
    n, t0, c0 = 0, 0.0, 0.0
    for i, batch in enumerate(loader):
        images, seed = (batch.images, batch.seed) if isinstance(batch, D.Batch) else (batch[0], 0)
        if finish is not None:
            images = finish(images, seed)
        if i == 0:
            t0, c0 = time.perf_counter(), cpu_seconds(loader)
        else:
            n += len(images)
    return n / (time.perf_counter() - t0), n / (cpu_seconds(loader) - c0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=-1, help="loader workers; -1: min(4, cores), as dogcat's default")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    workers = D.resolve_workers(args.workers)
    train = make_data(args.images)
    files = sorted(train.glob("*.jpg"))
    print(f"{len(files)} JPEGs, 300-500 px; {workers} loader workers, batch {args.batch_size}, {cores} cores; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads in the main process", flush=True)

    cfg = dict(train_data_root=str(train), image_size=224, val_split=0.0, batch_size=args.batch_size)
    cache_dir = tempfile.mkdtemp(prefix="dogcat-bench-cache-")  # a fresh build every run: it is timed too
    t0 = time.perf_counter()
    cached = D.build_train_val(DataConfig(**cfg, cache=True, cache_dir=cache_dir, in_memory_mb=0))  # memory-mapped
    build_s = time.perf_counter() - t0
    plain = D.build_train_val(DataConfig(**cfg))

    def dogcat_loader(bundle: D.DataBundle) -> DataLoader:  # what the trainer builds
        sampler = D.ResumableSampler(len(bundle.train), seed=0)
        return D.make_loader(D.SeededItems(bundle.train), args.batch_size, workers, False, 0, sampler=sampler)

    no_cv = copy.copy(cached.train)  # the same cache and samples, cropped without OpenCV
    no_cv.prepare = D.CropFlipBatch(224, "default", threads=max(1, workers), opencv=False)
    loaders = {
        "a": (DataLoader(TemplatePipeline(files), batch_size=args.batch_size, shuffle=True, num_workers=workers,
                         persistent_workers=workers > 0), None),
        "b": (dogcat_loader(plain), plain.batch_transform),
        "c": (dogcat_loader(cached), cached.batch_transform),
        "d": (dogcat_loader(dataclasses.replace(cached, train=no_cv)), cached.batch_transform),
    }
    names = {"a": "template: PIL + transforms v1, per sample", "b": "dogcat, first pass (no cache)",
             "c": "dogcat, from the packed cache", "d": "c without OpenCV (torch's resize)"}
    wall: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(args.rounds):
        for k, (loader, finish) in loaders.items():
            w, c = rate(loader, finish)
            wall[k].append(w / cores)
            cpu[k].append(c)
        print(f"round {r + 1}: " + ", ".join(f"{k} {wall[k][-1]:.0f} ({cpu[k][-1]:.0f})" for k in loaders)
              + " img/s/core (img per CPU-second)", flush=True)
    load = os.getloadavg()[0]
    print(f"\n{'pipeline':<42} {'img/s/core':>14} {'img/CPU-s':>14}   (mean ± std of {args.rounds} rounds; "
          f"load {load:.1f})")
    for k in loaders:
        print(f"{k}  {names[k]:<39} {mean_std(wall[k], '{:.0f}'):>14} {mean_std(cpu[k], '{:.0f}'):>14}")
    print(f"   cache build (once; {len(files)} images, {cores} processes) {len(files) / build_s / cores:>10.0f}"
          f"   ({build_s:.1f} s)")
    for (x, y), label in ((("b", "a"), "target >= 1.3"), (("c", "a"), "target >= 10"),
                          (("c", "d"), "OpenCV: the [fast] extra")):
        for col, d in (("wall", wall), ("CPU", cpu)):
            print(f"{x}/{y} ({label}), {col}: "
                  f"{ratio_summary([p / q for p, q in zip(d[x], d[y])], 'rounds')}")
    if load > cores:  # other processes took cores: the CPU-time column is the one to trust
        print(f"note: load {load:.1f} on {cores} cores: other processes shared the machine; img/s/core (wall) "
              f"is lower than on an idle machine, img per CPU-second much less so")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
