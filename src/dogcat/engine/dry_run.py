"""``dogcat train --dry-run[=N]`` (alias ``--fast-dev-run``, Lightning's name): the first minutes of a run, in
seconds, leaving nothing behind.

It is the public :func:`~dogcat.engine.trainer.train` on the same config with five changes: a temporary run
folder, one epoch of ``N`` training batches (``--limit-train-batches``) and ``N`` validation batches
(``--limit-val-batches``), no tracker (``--logger=none``: MLflow and W&B keep records outside the run folder),
and one process. So the data is read, the model built and moved to the device, each batch goes through the
real step (forward, loss, backward, optimizer, scaler, EMA), validation computes every metric, the epoch is
logged and checkpointed (last, best, top-k), and then the checkpoints are loaded back, once as a resume reads
them and once as ``val`` / ``predict`` do. Whatever a real run would fail on in its first minutes (unreadable
data, a model that does not fit the image size, a wrong class count, out of memory at this batch size, an
unwritable ``--runs-root``, a tracker's missing package) fails here the same way, with the same message.

The temporary folder is ``<runs_root>/.dogcat-dry-run-XXXX/run`` (``--run-dir``'s parent instead, when given):
on the disk a real run would write, one level below ``runs_root`` so that ``dogcat runs`` and ``--resume=latest``
never take it for a run; it is deleted when the dry run ends, failed or not, with any folder the dry run had to
make for it. Caches are kept, as they are caches and a real run reuses them: the packed ``--cache``, the
``--normalize=dataset`` statistics, the ``--precision=auto`` probe's entry. A ``kill -9`` leaves the hidden
folder behind (nothing takes it for a run; delete it by hand).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError, DogcatError, as_config, flag
from ..control import TrainingStopped
from ..io import disk_full_as
from ..metrics import summary
from ..tracking.folder import RunFolder
from ..tracking.records import epochs
from ..tracking.run import make_folder, refuse_taken
from ..tracking.tracker import check_loggers
from .checkpoint import Checkpoints
from .trained import load_model
from .runtime import pick_device
from .trainer import train

PREFIX = ".dogcat-dry-run-"


@dataclass
class DryRun:
    """What a dry run did: the batches, the first epoch's record, the shapes, the checkpoints, the time."""

    batches: int               # training batches run (the limit, or fewer when the data has fewer)
    val_batches: int           # validation batches (0: no validation set)
    steps: int                 # optimizer steps (batches / --accum-steps, rounded up)
    batch_size: int
    input_shape: tuple[int, ...]   # of one batch: (batch, channels, size, size)
    output_shape: tuple[int, ...]  # the logits of one batch: (batch, classes)
    classes: list[str]
    parameters: int
    device: str
    precision: str
    record: dict[str, Any]     # the epoch's metrics.jsonl record: train_loss, val_* metrics, seconds
    checkpoints: list[str]     # the files written and loaded back
    checkpoint_bytes: int
    seconds: float
    peak_memory: int | None = None  # bytes of CUDA memory at most allocated; None on the CPU
    processes: int = 1         # --nproc of the config (the dry run uses one)

    def text(self) -> str:
        """The dry run's account, a few lines for the terminal."""
        r = self.record
        val = {k[4:]: v for k, v in r.items() if k.startswith("val_")}
        lines = [f"dry run: {self.batches} training batch{'es' * (self.batches != 1)} ({self.steps} optimizer "
                 f"step{'s' * (self.steps != 1)}) of {' x '.join(map(str, self.input_shape))} -> "
                 f"{' x '.join(map(str, self.output_shape))} logits, {len(self.classes)} classes "
                 f"({', '.join(self.classes[:6])}{', ...' if len(self.classes) > 6 else ''})",
                 f"  model: {self.parameters:,} parameters on {self.device}, {self.precision}",
                 f"  train loss {r['train_loss']:.4f}"]
        if self.val_batches:
            lines.append(f"  {self.val_batches} validation batch{'es' * (self.val_batches != 1)}: "
                         f"{summary(val, 'val ')}")
        else:
            lines.append("  no validation set")
        lines.append(f"  checkpoints {', '.join(self.checkpoints)} ({self.checkpoint_bytes / 2**20:.1f} MiB) "
                     "written and loaded back")
        if self.peak_memory is not None:
            lines.append(f"  peak {self.device} memory {self.peak_memory / 2**20:.0f} MiB")
        if self.processes > 1:
            lines.append(f"  in one process (--nproc={self.processes} is for the real run)")
        lines.append(f"  {self.seconds:.1f} s in all (epoch {r['epoch_seconds']:.1f} s); nothing kept")
        return "\n".join(lines)


def dry_run(cfg: Config | str | Path | list | dict | None = None, batches: int = 2, **overrides: Any) -> DryRun:
    """Train ``batches`` batches and validate ``batches`` batches as ``train(cfg, **overrides)`` would, in a
    temporary run folder that is deleted afterwards (see the module's docstring)."""
    cfg = as_config(cfg, overrides)
    if cfg.train.resume:
        raise ConfigError(f"{flag('resume')} and --dry-run do not go together: a dry run starts a new run and "
                          "keeps nothing (run it with the options of the run to check)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--dry-run runs in one process: start it without torchrun (a --nproc in the config is "
                          "left for the real run)")
    if batches < 1:
        raise ConfigError(f"--dry-run={batches}: the number of batches must be at least 1")
    check_loggers(cfg.train.logger)  # the trackers are not started, but a missing package is found here too
    home, option = ((Path(cfg.train.run_dir).expanduser().parent, flag("run_dir")) if cfg.train.run_dir
                    else (Path(cfg.train.runs_root).expanduser(), flag("runs_root")))
    if cfg.train.run_dir:
        refuse_taken(Path(cfg.train.run_dir).expanduser())
    made = _missing(home)
    t0 = time.perf_counter()
    try:
        make_folder(home, option)  # the real run's message when it cannot be made
        with disk_full_as(home, what="making the dry run's folder"):
            try:
                tmp = Path(tempfile.mkdtemp(prefix=PREFIX, dir=home))
            except OSError as e:
                raise ConfigError(f"{option}={home}: cannot write there ({e.strerror or e})") from None
        try:
            return _run(cfg, batches, tmp / "run", t0)
        except TrainingStopped as e:  # its message offers a resume of what is about to be deleted
            stopped = DogcatError(f"dry run stopped by {signal.Signals(e.signum).name}; nothing kept")
            stopped.exit_code = e.exit_code
            raise stopped from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for folder in reversed(made):  # the folders made for it, deepest first, when still empty
            try:
                folder.rmdir()
            except OSError:
                break


def _missing(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    out = []
    for p in [folder, *folder.absolute().parents]:
        if p.exists():
            break
        out.append(p)
    return out[::-1]


def _run(cfg: Config, batches: int, run_dir: Path, t0: float) -> DryRun:
    t = cfg.train
    dry = dataclasses.replace(cfg, train=dataclasses.replace(
        t, run_dir=str(run_dir), logger="none", max_epoch=1, max_steps=None, nproc=1, resume=None,
        limit_train_batches=min(batches, t.limit_train_batches or batches),
        limit_val_batches=min(batches, t.limit_val_batches or batches)))
    device = pick_device(t)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(dry)
    folder = RunFolder(result.run_dir)
    record = epochs(folder.records())[-1]
    ckpts = Checkpoints(folder.checkpoints, t.monitor, t.keep_top_k, t.save_every_epochs)
    ckpt, _ = ckpts.load_latest()  # as --resume reads it
    loaded = load_model(result.run_dir)  # as val / test / predict / export read it (best.pt)
    files = sorted(p for p in folder.checkpoints.glob("*.pt"))
    pre, bs = loaded.pre, cfg.data.batch_size
    trained = min(dry.train.limit_train_batches, math.ceil(_rows(folder, "train") / bs))
    with torch.no_grad():
        x = torch.zeros(min(bs, 2), pre.in_chans, pre.size, pre.size, device=loaded.runtime.device)
        out = loaded.model(x)
    if tuple(out.shape) != (len(x), len(pre.classes)):
        raise ConfigError(f"the model loaded back from {loaded.checkpoint} gives logits of shape {tuple(out.shape)} "
                          f"for {len(x)} images of {len(pre.classes)} classes")
    return DryRun(
        batches=trained, val_batches=math.ceil(record.get("val_count", 0) / bs),
        steps=int(record["step"]), batch_size=bs, input_shape=(bs, pre.in_chans, pre.size, pre.size),
        output_shape=(bs, len(pre.classes)), classes=list(pre.classes),
        parameters=sum(p.numel() for p in loaded.model.parameters()), device=str(device),
        precision=str(ckpt.get("precision", t.precision)), record=record,
        checkpoints=[p.name for p in files], checkpoint_bytes=sum(p.stat().st_size for p in files),
        seconds=time.perf_counter() - t0,
        peak_memory=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None, processes=t.nproc)


def _rows(folder: RunFolder, split: str) -> int:
    """Images of a split, from the run's split file (``splits/<split>.csv``: a header, then a row per image; a
    file name may hold a newline, so rows are counted by the csv module); 0 when there is none."""
    path = folder.splits / f"{split}.csv"
    if not path.is_file():
        return 0
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)
