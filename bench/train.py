"""Training speed and accuracy, as ratios and as statistics over seeds (the machine may be shared: absolute
numbers drift).

(a) overhead: dogcat's training img/s / a bare PyTorch loop's, same model, in-memory data, precision, batch;
    in fp32 and in bf16 (where it is native), ``--a-precision`` to choose.
(b) the template's way (ResNet-34 fp32, per-sample PIL pipeline, Adam, DataLoader) vs dogcat's default for
    ResNet-34 (--precision=auto, channels_last, packed-cache data path) on the same generated JPEGs;
    ``--b-variants`` also times dogcat at larger batches and with --compile (what would move the figure).
(c) the built-in recipe fashion-mnist (the demo): test accuracy after each epoch against training time, and when
    it first reaches 93 %.
(d) the built-in recipe fashion-mnist-94: the same, and when it first reaches 94 %.

Statistics, as airbench reports its results: every accuracy and time figure of (c) and (d) is the mean ± the
sample standard deviation over ``--seeds=N`` trainings (default 3; the recipe's ``seed`` set to 0..N-1, which
changes the initial weights, the training order and the augmentation; the train/val split stays), each seed's
figures printed first. A speed ratio ((a), (b)) is a ratio of runs alternated in the same process (A B A B, so
that a neighbour's burst or a machine warming up favours neither side); it is given as the mean ± std of the
per-pair ratios, with their median and range: on a shared machine a pair now and then lands in another job's
burst, and the median says how much one such pair moved the mean. (a) takes 12 pairs a precision, (b)
``--seeds`` pairs. The first line names the CPU (model, AMD core generation, whether bf16 is native: that decides
--precision=auto), and each figure is printed with the load average, since other jobs slow it.

    .venv/bin/python bench/train.py [--quick] [--only=a,b,c,d] [--seeds=3] [--b-variants]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from dogcat import load_config, test, train
from dogcat.data import fashion_mnist
from dogcat.hardware import cpu_kind
from dogcat.models import build_model
from _figures import alternated, mean_std, ratio_summary

QUIET = {"progress": "none", "debug_file": None, "keep_top_k": 0}


def _fmnist_subset(folder: Path, n: int) -> Path:
    """The first n Fashion-MNIST training images (and the test set) as IDX files."""
    import gzip

    src = fashion_mnist.resolve_root(None)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        raw = gzip.open(src / name).read()
        head = 16 if "images" in name else 8
        item = 784 if "images" in name else 1
        body = raw[head:head + n * item]
        header = bytearray(raw[:head])
        header[4:8] = n.to_bytes(4, "big")
        (folder / name).write_bytes(gzip.compress(bytes(header) + body, compresslevel=1))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


def bare_loop(x: torch.Tensor, y: torch.Tensor, model_name: str, batch: int, epochs: int, lr: float,
              wd: float, channels_last: bool, precision: str = "fp32") -> float:
    """The plainest correct loop over uint8 tensors in memory (bf16: the forward and the loss under
    autocast, as dogcat runs them): img/s."""
    import contextlib

    torch.manual_seed(0)
    model = build_model(model_name, 10, 1).to(memory_format=torch.channels_last if channels_last else
                                             torch.contiguous_format)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = ((x[idx].float() / 255 - 0.2860) / 0.3530).contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            with (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
                loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(idx)
    return n / (time.perf_counter() - t0)


def part_a(tmp: Path, quick: bool, precision: str = "fp32") -> list[float]:
    """The per-pair ratios; pairs alternate order (bare first, then dogcat first) so that a machine
    warming up or a neighbour's burst does not favour either side."""
    n, epochs, reps = (2048, 1, 1) if quick else (6144, 1, 12)  # 48 steps a run: the first ones weigh little
    data = _fmnist_subset(tmp / "fm-a", n)
    x, y = fashion_mnist.load_split(data, "train")
    cfg = dict(dataset="fashion-mnist", fashion_mnist_root=str(data), image_size=28, val_split=0.0, augment="none",
               model="smallcnn", batch_size=128, num_workers=0, optimizer="adamw", lr=0.003, weight_decay=0.05,
               scheduler="none", max_epoch=epochs, channels_last=True, precision=precision, runs_root=str(tmp / "runs"),
               save_every_epochs=0, print_freq=50, **QUIET)
    bare_loop(x, y, "smallcnn", 128, 1, 0.003, 0.05, True, precision)  # warm-up: allocator, oneDNN kernels
    ratios, best = [], [0.0, 0.0]
    for r in range(reps):
        def ours() -> float:
            res = train(load_config({**cfg, "env": f"a-{precision}-{r}"}))
            return statistics.fmean(h["train_images_per_s"] for h in res.history)

        def bare() -> float:
            return bare_loop(x, y, "smallcnn", 128, epochs, 0.003, 0.05, True, precision)

        o, b = alternated(r, ours, bare)
        ratios.append(o / b)
        best = [max(best[0], o), max(best[1], b)]
        print(f"  (a) {precision} rep {r}: bare loop {b:.0f} img/s, dogcat {o:.0f} img/s -> {o / b:.3f} "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    # The fastest run of each is the one least disturbed by the machine's neighbours (timeit's reasoning)
    print(f"  (a) {precision} best of {reps}: dogcat {best[0]:.0f} / bare {best[1]:.0f} img/s -> {best[0] / best[1]:.3f}")
    return ratios


def make_jpegs(root: Path, n: int) -> None:
    """n JPEGs of 300-500 px, half cats, half dogs (Kaggle layout), smooth random colour fields."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = rng.integers(300, 501, size=2)
        base = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (root / "train" / f"{'cat' if i % 2 else 'dog'}.{i}.jpg").write_bytes(buf.getvalue())


def template_way(root: Path, size: int, batch: int, steps: int) -> float:
    """The template's chapter-9 loop: per-sample PIL decode + torchvision transforms, ResNet-34 fp32, Adam."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset
    from torchvision.models import resnet34

    files = sorted((root / "train").glob("*.jpg"))

    class DogCat(Dataset):
        tf = T.Compose([T.Resize(int(size * 256 / 224)), T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            return self.tf(Image.open(files[i]).convert("RGB")), int("dog" in files[i].name)

    torch.manual_seed(0)
    model = resnet34(num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(DogCat(), batch_size=batch, shuffle=True, num_workers=min(4, torch.get_num_threads()))
    model.train()
    t0, n = time.perf_counter(), 0
    for i, (xb, yb) in enumerate(loader):
        if i == steps:  # a fixed number of steps, as dogcat's --max-steps
            break
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:  # the first step (worker start, kernel set-up) is not counted, as for dogcat
            t0 = time.perf_counter()
        else:
            n += len(yb)
    return n / (time.perf_counter() - t0)


def _dogcat_rate(cfg: dict, env: str) -> tuple[float, float]:
    """img/s of ``dogcat.train`` over steps 3..N (the first two are warm-up, as for the template's loop), and
    the whole call's seconds (set-up, a first compile, the checkpoint)."""
    t0 = time.perf_counter()
    res = train(load_config({**cfg, "env": env}))
    wall = time.perf_counter() - t0
    log = [r for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
           if r.get("kind") == "step"]  # step k logs the img/s of its k-1 earlier batches: k-1 / t_k
    batch, steps = cfg["batch_size"], len(log)
    t2, tn = batch / log[1]["images_per_s"], (steps - 1) * batch / log[-1]["images_per_s"]
    return (steps - 2) * batch / (tn - t2), wall


def part_b(tmp: Path, quick: bool, variants: bool, reps: int) -> dict[str, list[float]]:
    """The per-pair ratios of ``reps`` pairs, the template's way first in even pairs and dogcat first in odd ones;
    with ``variants``, each pair also times dogcat at batch 64 and with --compile (what would move the figure),
    each against that pair's template run."""
    size, batch, steps, n = (112, 16, 4, 64) if quick else (224, 16, 5, 320)
    root = tmp / "jpegs"
    make_jpegs(root, n)
    cfg = dict(dataset="kaggle", train_data_root=str(root / "train"), test_data_root=None, val_split=0.0,
               image_size=size, batch_size=batch, model="resnet34", optimizer="adam", scheduler="none",
               max_epoch=1, max_steps=steps, precision="auto", channels_last=True, cache=True,
               runs_root=str(tmp / "runs"), print_freq=1, **QUIET)
    from dogcat.data import prepare

    t0 = time.perf_counter()
    prepare(root / "train", load_config(cfg).data, progress=False)
    print(f"  (b) one-off packed cache build of {n} JPEGs: {time.perf_counter() - t0:.1f} s "
          "(`dogcat prepare`; not in the img/s)", flush=True)
    kinds = {"default": {}}
    if variants:  # the compiled runs' first steps compile: their img/s is over steps 3..N, the wall is printed
        if n // 64 >= 3:  # img/s is taken over steps 3..N
            kinds["batch 64"] = {"batch_size": 64, "max_steps": min(steps, n // 64)}
        kinds["--compile"] = {"compile": True}
    ratios: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(reps):
        ours, template = alternated(
            r, lambda: {k: _dogcat_rate({**cfg, **over}, f"b{r}-{i}") for i, (k, over) in enumerate(kinds.items())},
            lambda: template_way(root, size, batch, steps))
        for k, (rate, wall) in ours.items():
            ratios[k].append(rate / template)
            print(f"  (b) pair {r}: template's way {template:.1f} img/s, dogcat {k} {rate:.1f} img/s -> "
                  f"{rate / template:.2f}x (the whole train() call: {wall:.0f} s)", flush=True)
    return ratios


def part_c(tmp: Path, quick: bool, recipe: str, tag: str, precision: str | None = None, seed: int = 0,
           overrides: dict | None = None) -> tuple[list[tuple[int, float, float, float, float, float]], float]:
    """One training of the recipe with ``seed``. Per epoch: epoch, its seconds (training + validation), the
    cumulative seconds, test accuracy (the recipe's own evaluation: flip TTA when it says so), training loss,
    validation accuracy; and the seconds
    of the whole ``train()`` call. ``precision`` overrides the recipe's (fp32: what a CPU without native bf16
    runs)."""
    over: dict = {"save_every_epochs": 1, "keep_top_k": 0, "env": f"{tag}-seed{seed}", "seed": seed,
                  "runs_root": str(tmp / "runs"), "progress": "none", "debug_file": None}
    if precision:
        over["precision"] = precision
    over.update(overrides or {})
    if quick:
        over.update(fashion_mnist_root=str(_fmnist_subset(tmp / "fm-c", 4096)), max_epoch=2)
    t0 = time.perf_counter()
    res = train(load_config(over, config_file=recipe))
    whole = time.perf_counter() - t0
    rows, wall = [], 0.0
    for h in res.history:
        wall += h["epoch_seconds"]
        ck = res.run_dir / "checkpoints" / f"epoch-{h['epoch']:04d}.pt"
        acc = test(str(ck), {"result_file": str(tmp / "sub.csv"), "progress": "none"})["metrics"]["accuracy"]
        rows.append((h["epoch"], h["epoch_seconds"], wall, acc, h["train_loss"], h.get("val_accuracy", float("nan"))))
        print(f"  ({tag}) seed {seed} epoch {h['epoch']}: {h['epoch_seconds']:.1f} s, {wall:.0f} s of training, "
              f"test accuracy {acc:.4f} (load average {os.getloadavg()[0]:.2f}, this run's ~2 included)", flush=True)
    return rows, whole


def report_c(tag: str, recipe: str, runs: list[tuple[list[tuple[int, float, float, float, float, float]], float]],
             target: float) -> None:
    """Each seed's line, then every figure as mean ± std over the seeds (epochs every seed reached)."""
    for seed, (rows, whole) in enumerate(runs):
        hit = next((r for r in rows if r[3] >= target), None)
        print(f"({tag}) seed {seed}: {len(rows)} epochs, {rows[-1][2]:.0f} s of training ({whole:.0f} s for the "
              f"whole train() call), test accuracy {rows[-1][3]:.4f}; {target:.0%} "
              + (f"after {hit[2]:.0f} s (epoch {hit[0]})" if hit else "not reached"))
    n = len(runs)
    for i in range(min(len(rows) for rows, _ in runs)):
        acc = [rows[i][3] * 100 for rows, _ in runs]
        secs = [rows[i][2] for rows, _ in runs]
        print(f"({tag}) epoch {runs[0][0][i][0]}: test accuracy {mean_std(acc, '{:.2f}')} %, after "
              f"{mean_std(secs, '{:.0f}')} s of training (mean ± std over {n} seeds)")
    final = [rows[-1][3] * 100 for rows, _ in runs]
    secs = [rows[-1][2] for rows, _ in runs]
    print(f"({tag}) recipe {recipe}, {n} seeds: test accuracy {mean_std(final, '{:.2f}')} % after "
          f"{mean_std(secs, '{:.0f}')} s of training (mean ± std; min {min(final):.2f}, max {max(final):.2f}); "
          f"last epoch's val accuracy {mean_std([rows[-1][5] * 100 for rows, _ in runs], '{:.2f}')} %, "
          f"training loss {mean_std([rows[-1][4] for rows, _ in runs], '{:.3f}')}")
    hits = [next((r[2] for r in rows if r[3] >= target), None) for rows, _ in runs]
    reached = [h for h in hits if h is not None]
    print(f"({tag}) {target:.0%} test accuracy reached by {len(reached)} of {n} seeds"
          + (f", after {mean_std(reached, '{:.0f}')} s of training" if reached else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run, figures not meaningful")
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--a-precision", default="fp32,bf16",
                    help="(a): the precisions to compare in (bf16 is skipped where it is not native)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for everything (0: torch's default, one per core). On a machine other jobs "
                         "share, 1 keeps OpenMP's threads from waiting on each other's time slices")
    ap.add_argument("--b-variants", action="store_true", help="(b): also larger batches and --compile")
    ap.add_argument("--seeds", type=int, default=3,
                    help="(c), (d): trainings (seeds 0..N-1) each figure is the mean ± std of; (b): alternated pairs")
    ap.add_argument("--fmnist-precision", default=None, choices=["fp32", "bf16"],
                    help="(c), (d): instead of the recipe's auto (fp32: as on a CPU without native bf16)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="(c), (d): another value for one of the recipe's options (repeatable; the value is read as "
                         "YAML): --set augment=randaugment, --set compile=true")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            ap.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set augment=randaugment")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    if args.seeds < 1:
        ap.error(f"--seeds={args.seeds}: at least 1 (3 or more for a standard deviation worth quoting)")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_kind()}"
          f"{' (quick)' if args.quick else ''}; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for precision in args.a_precision.split(",") if "a" in args.only else ():
            if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                print("(a) bf16: skipped, this CPU has no native bf16")
                continue
            print(f"(a) overhead in {precision}, dogcat / bare loop img/s (target >= 0.97): "
                  f"{ratio_summary(part_a(tmp, args.quick, precision))}", flush=True)
        if "b" in args.only:
            for kind, ratios in part_b(tmp, args.quick, args.b_variants, 1 if args.quick else args.seeds).items():
                print(f"(b) dogcat {kind} / template's way, ResNet-34 img/s (target >= 2.5x for the default): "
                      f"{ratio_summary(ratios)}", flush=True)
        for tag, recipe, target in (("c", "fashion-mnist", 0.93), ("d", "fashion-mnist-94", 0.94)):
            if tag in args.only:
                runs = [part_c(tmp, args.quick, recipe, tag, args.fmnist_precision, seed, overrides)
                        for seed in range(args.seeds)]
                report_c(tag, recipe + "".join(f" {k}={v}" for k, v in overrides.items()), runs, target)
    print(f"load average at the end {os.getloadavg()[0]:.2f} (figures taken above ~0.7 are slowed by other jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
