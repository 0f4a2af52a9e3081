"""GPU readiness in one run: the CUDA-marked tests, then what the data path costs a GPU.

    make setup && .venv/bin/python bench/gpu.py --out=gpu.json      # on a CUDA machine, ~3-5 minutes
    .venv/bin/python bench/gpu.py --smoke                           # the same code path, tiny, on the CPU

Parts, each in its own try/except, the JSON rewritten after each one, all inside --budget-s:
  tests       ``pytest -m cuda tests/test_cuda.py`` in a subprocess (fp16 + grad scaler and its exact resume,
              bf16, pinned-memory loader, a 1-process NCCL group through DDP, channels_last, compile)
  data        N generated 300-500 px JPEGs in the Kaggle layout, packed once (``dogcat prepare``)
  model       ResNet-50 at 224, bf16 autocast + channels_last, batch 256, AdamW: img/s of the bare
              forward/backward/step on synthetic tensors already on the GPU (no synchronisation per step)
  loader      the training loader alone (packed cache, random resized crop + flip, pinned), as
              ``dogcat.train`` builds it; then the same plus the copy to the GPU and the normalisation there
  anatomy     a bare loop fed by that loader, with or without a host sync per step (dogcat's non-finite check
              makes one) and with or without a thread preparing batches ahead: where e2e loses to model
  e2e         ``dogcat.train`` on the cache with the same model, precision, layout and batch: img/s inside
              its epochs (step logs) and per epoch
  compile     if time is left: the model part again with ``Module.compile()`` (compile time, img/s)
The figures: img/s of each, e2e / model (target >= 0.9) and e2e img/s (target >= 2,500 on an H100/H200).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(size=224, batch=256, images=8192, model_warmup=10, model_steps=30, loader_batches=48, epochs=3,
            anatomy_steps=24, test_timeout=200, model="torchvision:resnet50", precision="bf16")
# the smoke run: every part and figure of the full one, at sizes a 2-core CPU runs in seconds (bf16 is emulated,
# and slow, on CPUs without AVX-512 BF16)
SMOKE = dict(size=32, batch=4, images=24, model_warmup=1, model_steps=2, loader_batches=6, epochs=2,
             anatomy_steps=3, test_timeout=60, model="smallcnn", precision="fp32")


class Budget(Exception):
    """A part ran past its share of --budget-s."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Budget in the main thread after ``seconds`` (checked between Python bytecodes)."""
    def handler(signum: int, frame: Any) -> None:
        raise Budget(f"over its time limit ({seconds:.0f} s)")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Report:
    """The JSON report, written (atomically) after every part, so a run cut short still leaves its figures."""

    def __init__(self, path: Path, budget: float) -> None:
        self.path, self.t0, self.budget = path, time.monotonic(), budget
        self.data: dict[str, Any] = {"meta": meta(), "parts": {}, "figures": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def part(self, name: str, fn: Callable[[], dict], reserve: float = 0.0, cap: float | None = None) -> dict:
        """Run one part with at most ``min(cap, time left - reserve)`` seconds; record its result or error."""
        limit = min(cap or 1e9, self.left() - reserve)
        t0 = time.monotonic()
        if limit < 5:
            out: dict[str, Any] = {"ok": False, "skipped": f"no time left ({self.left():.0f} s)"}
        else:
            try:
                with time_limit(limit):
                    out = {"ok": True, **fn()}
            except Exception as e:  # every part is optional to the others: record and go on
                out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        out["seconds"] = round(time.monotonic() - t0, 1)
        self.data["parts"][name] = out
        status = "ok" if out["ok"] else f"FAILED: {out.get('error') or out.get('skipped')}"
        print(f"[{name}] {status} ({out['seconds']} s)", flush=True)
        self.write()
        return out

    def figure(self, name: str, value: float | None, text: str) -> None:
        if value is not None:
            self.data["figures"][name] = round(value, 3)
        print(f"  {text}", flush=True)

    def write(self) -> None:
        self.data["meta"]["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def meta() -> dict[str, Any]:
    from dogcat.hardware import cpu_name

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "host": platform.node(), "cpu_cores": os.cpu_count(), "cpu": cpu_name(),
                            "cuda": torch.cuda.is_available(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    cuda_version=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    return info


# ---- parts --------------------------------------------------------------------------------------------------

def run_tests(timeout: float, smoke: bool) -> dict:
    """The CUDA-marked tests in a subprocess (a hung NCCL group or compile cannot stall the rest); the smoke
    run hides any GPU from them (they skip: the CPU path only)."""
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # before cuBLAS starts: deterministic GEMMs
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rA",
           str(ROOT / "tests" / "test_cuda.py")]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-4000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-4000:]
        return {"passed": False, "returncode": None, "summary": f"timed out after {timeout:.0f} s", "tail": str(tail)}
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    summary = lines[-1] if lines else ""
    results = {}
    for x in lines:
        word, _, name = x.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED") and "::" in name:
            results[name.split("::")[-1].split(" ")[0]] = word
    return {"passed": p.returncode == 0, "returncode": p.returncode, "summary": summary, "results": results,
            "tail": (p.stdout + p.stderr)[-4000:]}


def _one_jpeg(args: tuple[Path, int, bool]) -> None:
    from PIL import Image

    folder, i, small = args
    rng = np.random.default_rng(i)
    w, h = rng.integers(64, 97, size=2) if small else rng.integers(300, 501, size=2)
    base = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    (folder / f"{'cat' if i % 2 else 'dog'}.{i}.jpg").write_bytes(buf.getvalue())


def make_data(root: Path, n: int, small: bool, cfg: Any) -> dict:
    """n JPEGs (smooth random colour fields) in the Kaggle layout, then their packed cache."""
    from dogcat.data import prepare

    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_one_jpeg, [(folder, i, small) for i in range(n)], chunksize=64)
    t1 = time.perf_counter()
    packed = prepare(folder, cfg.data, progress=False)
    t2 = time.perf_counter()
    return {"images": n, "generate_s": round(t1 - t0, 2), "prepare_s": round(t2 - t1, 2),
            "prepare_img_s": round(n / (t2 - t1)), "cache_mb": round(packed.nbytes / 2**20)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_both(name: str, size: int, batch: int, warmup: int, steps: int, device: torch.device,
               precision: str) -> dict:
    """``model_only`` with cuDNN's defaults (as dogcat runs today), then with ``cudnn.benchmark`` (autotuned
    convolutions for a fixed input size)."""
    out = model_only(name, size, batch, warmup, steps, device, precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        try:
            tuned = model_only(name, size, batch, warmup, steps, device, precision)
        finally:
            torch.backends.cudnn.benchmark = False
        out["cudnn_benchmark_img_s"] = tuned["img_s"]
    return out


def model_only(name: str, size: int, batch: int, warmup: int, steps: int, device: torch.device, precision: str,
               compile_model: bool = False) -> dict:
    """The bare training step on synthetic tensors already on the device: what the model alone can do."""
    from dogcat.models import build_model

    torch.manual_seed(0)
    model = build_model(name, 2, 3).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    t_compile = None
    if compile_model:
        model.compile()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    if compile_model:
        t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"img_s": batch * steps / dt, "ms_per_step": 1000 * dt / steps, "steps": steps}
    if t_compile is not None:
        out["warmup_with_compile_s"] = round(t_compile, 1)
    if device.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, opt, x, y
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def loader_only(cfg: Any, batches: int, device: torch.device) -> dict:
    """The training loader as ``dogcat.train`` builds it: batches per second alone, then with the copy to the
    device and ``batch_transform`` there (synchronised per batch: what one step waits for when nothing
    overlaps)."""
    from dogcat.data import ResumableSampler, SeededItems, build_train_val, make_loader
    from dogcat.engine.runtime import memory_format

    data = build_train_val(cfg.data)
    sampler = ResumableSampler(len(data.train), 0)
    loader = make_loader(SeededItems(data.train), batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                         shuffle=False, seed=0, sampler=sampler, pin_memory=device.type == "cuda")

    def batches_of(epoch: int) -> Iterator[Any]:
        sampler.set_epoch(epoch)
        return iter(loader)

    def run(to_device: bool) -> float:
        n, epoch, it = 0, 0, batches_of(0)
        next(it)  # first batch: thread pool, allocations
        t0 = time.perf_counter()
        for _ in range(batches):
            try:
                b = next(it)
            except StopIteration:
                epoch += 1
                it = batches_of(epoch)
                b = next(it)
            if to_device:
                x = b.images.to(device, non_blocking=True, memory_format=memory_format(True))
                x = data.batch_transform(x, b.seed)
                _sync(device)
            n += len(b.labels)
        return n / (time.perf_counter() - t0)

    alone = run(False)
    with_copy = run(True)
    return {"img_s": alone, "with_copy_and_normalise_img_s": with_copy, "batches": batches,
            "threads": max(1, getattr(loader, "num_workers", 0)) if loader.num_workers else "main process",
            "pinned": loader.pin_memory, "images_per_epoch": len(data.train)}


def _prefetched(it: Iterator[Any], depth: int = 3) -> Iterator[Any]:
    """Batches of ``it`` produced by a background thread, ``depth`` ahead (the crops release the GIL)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    done = object()

    def produce() -> None:
        try:
            for b in it:
                q.put(b)
        finally:
            q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (b := q.get()) is not done:
        yield b


def anatomy(cfg: Any, steps: int, device: torch.device, precision: str) -> dict:
    """Where end to end loses against model only: a bare loop fed by dogcat's loader (copy, batch_transform,
    forward, backward, step), with and without a host synchronisation per step (dogcat's non-finite check
    makes one) and with and without a thread that prepares batches ahead."""
    from dogcat.data import ResumableSampler, SeededItems, build_train_val, make_loader
    from dogcat.models import build_model

    data = build_train_val(cfg.data)
    sampler = ResumableSampler(len(data.train), 0)
    loader = make_loader(SeededItems(data.train), batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                         shuffle=False, seed=0, sampler=sampler, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = build_model(cfg.model.model, 2, 3).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    def run(sync: bool, prefetch: bool) -> float:
        it = _prefetched(batches()) if prefetch else batches()
        n, t0 = 0, 0.0
        for i in range(steps + 2):
            if i == 2:  # two warm-up steps
                _sync(device)
                t0, n = time.perf_counter(), 0
            b = next(it)
            x = b.images.to(device, non_blocking=True, memory_format=torch.channels_last)
            x = data.batch_transform(x, b.seed)
            y = b.labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sync:
                bool(torch.isfinite(loss))  # as check_finite: the host waits for this step's backward
            opt.step()
            n += len(b.labels)
        _sync(device)
        return n / (time.perf_counter() - t0)

    out = {f"{'sync' if sync else 'async'}_{'prefetch' if pre else 'inline'}_img_s": run(sync, pre)
           for sync, pre in ((True, False), (False, False), (True, True), (False, True))}
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def end_to_end(cfg: Any) -> dict:
    """``dogcat.train`` on the cache; img/s between step logs inside each epoch after the first (the steps
    after the first two of an epoch), and each later epoch's own figure (loader restart included)."""
    from dogcat import train

    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "step"]
    b = cfg.data.batch_size
    rates = []
    for epoch in sorted({r["epoch"] for r in steps}):
        if epoch == 1 and len({r["epoch"] for r in steps}) > 1:
            continue  # cuDNN autotuning, allocator growth
        # step k of an epoch logs k-1 batches' img/s over the time since the epoch began: t_k = (k-1) b / ips_k
        es = [r for r in steps if r["epoch"] == epoch]
        ts = [(i + 1) * b / r["images_per_s"] for i, r in enumerate(es) if r["images_per_s"] > 0]
        if len(ts) >= 4:
            rates.append((len(ts) - 3) * b / (ts[-1] - ts[2]))
    epochs = [h["train_images_per_s"] for h in res.history[1:]] or [h["train_images_per_s"] for h in res.history]
    precision = next((r.get("chosen") for r in records if r.get("event") == "precision"), cfg.train.precision)
    return {"img_s": float(np.median(rates)) if rates else None, "epoch_img_s": float(np.median(epochs)),
            "epochs": len(res.history), "steps": len(steps), "wall_s": round(wall, 1), "precision": precision,
            "run": str(res.run_dir)}


# ---- main ---------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "gpu.json"), help="the JSON report")
    ap.add_argument("--budget-s", type=float, default=330.0, help="the whole run's time limit (set-up excluded)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the code path, not figures")
    ap.add_argument("--skip-tests", action="store_true", help="leave out the pytest part")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.smoke and not torch.cuda.is_available():  # `make bench` on a CPU machine
        print("bench/gpu.py: no CUDA device here; `--smoke` runs its code path on the CPU")
        return 0
    s = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    report = Report(Path(args.out), args.budget_s)
    report.data["meta"].update(smoke=args.smoke, device=str(device), settings=s)
    m = report.data["meta"]
    print(f"dogcat GPU bench{' (smoke)' if args.smoke else ''}: torch {m['torch']}, "
          f"{m.get('gpu', 'no GPU')}, {m['cpu_cores']} CPU cores ({m['cpu']}); budget {args.budget_s:.0f} s", flush=True)
    if not args.skip_tests:  # leaves >= 120 s for the figures
        t = report.part("tests", lambda: run_tests(min(s["test_timeout"], report.left() - 125), args.smoke), reserve=120)
        if t["ok"]:
            print(f"  {t['summary']}", flush=True)

    from dogcat import load_config

    with tempfile.TemporaryDirectory(prefix="dogcat-gpu-") as d:
        tmp = Path(d)
        cfg = load_config(dict(
            dataset="kaggle", train_data_root=str(tmp / "data" / "train"), test_data_root=None, val_split=0.0,
            image_size=s["size"], batch_size=s["batch"], num_workers=-1, cache=True, model=s["model"],
            optimizer="adamw", lr=1e-3, weight_decay=0.05, scheduler="none", max_epoch=s["epochs"],
            precision=s["precision"], channels_last=True, device=device.type, runs_root=str(tmp / "runs"), env="e2e",
            print_freq=1, progress="none", debug_file=None, keep_top_k=0, save_every_epochs=0))
        data = report.part("data", lambda: make_data(tmp / "data", s["images"], args.smoke, cfg))
        mo = report.part("model", lambda: model_both(s["model"], s["size"], s["batch"], s["model_warmup"],
                                                    s["model_steps"], device, s["precision"]))
        if mo["ok"]:
            report.figure("model_img_s", mo["img_s"], f"model only: {mo['img_s']:.0f} img/s "
                          f"({mo['ms_per_step']:.1f} ms a step of {s['batch']})")
            if "cudnn_benchmark_img_s" in mo:
                report.figure("model_cudnn_benchmark_img_s", mo["cudnn_benchmark_img_s"],
                              f"model only with cudnn.benchmark: {mo['cudnn_benchmark_img_s']:.0f} img/s")
        if data["ok"]:
            lo = report.part("loader", lambda: loader_only(cfg, s["loader_batches"], device))
            if lo["ok"]:
                report.figure("loader_img_s", lo["img_s"], f"loader alone: {lo['img_s']:.0f} img/s; with the copy "
                              f"to {device.type} and normalisation: {lo['with_copy_and_normalise_img_s']:.0f} img/s")
            an = report.part("anatomy", lambda: anatomy(cfg, s["anatomy_steps"], device, s["precision"]))
            if an["ok"]:
                report.figure("bare_loop_sync_inline_img_s", an["sync_inline_img_s"], "bare loop on dogcat's loader: "
                              + ", ".join(f"{k[:-6].replace('_', ' + ')} {v:.0f}" for k, v in an.items()
                                          if k.endswith("_img_s")) + " img/s")
            e2e = report.part("e2e", lambda: end_to_end(cfg))
            if e2e["ok"]:
                report.figure("e2e_img_s", e2e["img_s"], f"end to end (dogcat.train): {e2e['img_s'] or 0:.0f} img/s "
                              f"inside epochs, {e2e['epoch_img_s']:.0f} img/s per epoch")
                if mo["ok"] and e2e["img_s"]:
                    ratio = e2e["img_s"] / mo["img_s"]
                    report.figure("e2e_over_model", ratio, f"end to end / model only: {ratio:.3f} (target >= 0.9)")
                if mo["ok"] and lo["ok"]:  # if nothing overlapped: 1 / (1/model + 1/data path)
                    serial = 1 / (1 / mo["img_s"] + 1 / lo["with_copy_and_normalise_img_s"])
                    report.figure("fully_serial_estimate_img_s", serial, f"estimate if the data path never "
                                  f"overlaps the model: {serial:.0f} img/s")
        if device.type == "cuda" and report.left() > 150:
            co = report.part("compile", lambda: model_only(s["model"], s["size"], s["batch"], s["model_warmup"],
                                                          s["model_steps"], device, s["precision"], compile_model=True), reserve=10)
            if co["ok"]:
                report.figure("model_compiled_img_s", co["img_s"], f"model only, compiled: {co['img_s']:.0f} img/s "
                              f"(warm-up with compile {co['warmup_with_compile_s']} s)")
    report.write()
    failed = [k for k, v in report.data["parts"].items() if not v["ok"]]
    tests_failed = not report.data["parts"].get("tests", {"passed": True}).get("passed", False)
    print(f"wrote {args.out}" + (f"; failed parts: {', '.join(failed)}" if failed else "")
          + ("; CUDA tests failed" if tests_failed and "tests" not in failed else ""), flush=True)
    return 1 if failed or tests_failed else 0


if __name__ == "__main__":
    sys.exit(main())
