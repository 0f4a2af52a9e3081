"""Every option of dogcat once: its section, type, default, one-line doc, choices or range, and its facts.

The dataclasses below are the typed config tree; ``OPTIONS`` maps each leaf name to its section and field, which
the CLI parser, ``dogcat help``, the YAML loader (``loading.py``) and the value checks all read.

Each option also says, in :func:`opt`, when it may change (``changes``: fixed / resume / live) and whether it is
part of the experiment (``experiment``); the lists the rest of dogcat uses are derived from that, here and
nowhere else: :data:`LIVE` (``dogcat ctl set``), :data:`RESUMABLE` (a resume may change them) and
:data:`NOT_EXPERIMENT` (left out of hparams and run comparisons). tests/test_layers.py keeps them consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ..metrics import DEFAULT_MONITOR, monitors


class DogcatError(Exception):
    """Base of the errors the ``dogcat`` command reports as one line (no traceback), exiting ``exit_code``.
    It lives at the bottom layer so that the CLI can catch every one without importing torch."""

    exit_code = 2


class ConfigError(DogcatError, ValueError):
    """A bad option: unknown key, wrong type or a value outside its choices. The CLI exits 2."""


@dataclass(frozen=True)
class Range:
    """The values a numeric option allows: ``[lo, hi]``, either end open. Floats must also be finite."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        return (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        def num(x: float) -> str:
            if math.isinf(x):
                return "inf" if x > 0 else "-inf"
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        return (f"{'(' if self.lo_open or self.lo == -math.inf else '['}{num(self.lo)}, "
                f"{num(self.hi)}{')' if self.hi_open or self.hi == math.inf else ']'}")


COUNT = 2**31 - 1  # upper end of counts (epochs, steps, ...): keeps every value a C int for torch and numpy
SEED = Range(0, 2**63 - 1)


# When an option may take a new value, from least to most: never within a run (another value is another
# experiment), on a resume (``--resume`` with a new value), or live too (``dogcat ctl set`` while it trains).
CHANGES = ("fixed", "resume", "live")


def opt(default: Any, doc: str, choices: tuple[str, ...] | None = None, range: Range | None = None,
        local: bool = False, changes: str | None = None, experiment: bool | None = None,
        name: str | None = None) -> Any:
    """A dataclass field carrying its documentation, allowed values (``choices`` or a numeric ``range``) and
    its facts:

    - ``local``: a place on this machine dogcat writes to or watches, taken only from the command line or a
      library call, never from a recipe file or a checkpoint (they are data from elsewhere);
    - ``changes``: one of :data:`CHANGES`; ``live`` implies that a resume may change it too. Default: ``resume``
      for a local option (a place), else ``fixed``;
    - ``experiment``: False for options that name places or change the display, not what is trained (left out
      of hparams and run comparisons). Default: not ``local``;
    - ``name``: the command-line spelling when it is not the field's (``--name`` for ``env``); the field's
      own spelling stays accepted as an alias."""
    changes = changes or ("resume" if local else "fixed")
    if changes not in CHANGES:
        raise ValueError(f"opt(changes={changes!r}): one of {', '.join(CHANGES)}")
    meta = {"doc": doc, "choices": choices, "range": range, "local": local, "changes": changes,
            "experiment": (not local) if experiment is None else experiment, "name": name}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    # no static choices: layouts are a registry in data/, a layer above; a wrong name fails there, in one line
    dataset: str = opt("auto", "data layout: auto (detected from train_data_root / train_list) or a registered "
                       "layout; a wrong name lists them")
    train_data_root: Optional[str] = opt("./data/train/", "training images: Kaggle flat folder or class subfolders",
                                         changes="resume")
    val_data_root: Optional[str] = opt(None, "separate validation folder (folder layout); else val_split of train",
                                       changes="resume")
    test_data_root: Optional[str] = opt("./data/test", "test images: Kaggle test folder (N.jpg) or any folder",
                                        changes="resume")
    train_list: Optional[str] = opt(None, "list file for training: CSV (path,label) or 'path label' lines",
                                    changes="resume")
    val_list: Optional[str] = opt(None, "list file for validation (same format)", changes="resume")
    test_list: Optional[str] = opt(None, "list file for test (labels optional)", changes="resume")
    task: str = opt("multiclass", "multiclass (one class per image, softmax) or multilabel (any number of labels "
                    "per image from a list file, a sigmoid and a threshold per label; docs/multilabel.md)",
                    ("multiclass", "multilabel"))
    path_column: str = opt("path", "CSV list files: the column that holds the image paths")
    label_column: str = opt("label", "CSV list files: the column that holds the label (multilabel: the labels, "
                            "separated by --label-sep; 'labels' is read when there is no 'label' column)")
    label_columns: Optional[str] = opt(None, "CSV list files, multilabel: one 0/1 column per label, named "
                                       "comma-separated (e.g. sky,water,tree), or * for every column but the path")
    label_sep: str = opt(";", "multilabel list files: what separates the labels of one image; 'space' for "
                         "whitespace")
    fashion_mnist_root: Optional[str] = opt(None, "folder with Fashion-MNIST IDX files; default: Debian's, else "
                                            "download", changes="resume")
    val_split: float = opt(0.3, "fraction of the training images held out for validation (stratified)",
                            range=Range(0, 1, hi_open=True))
    split_seed: int = opt(0, "seed of the train/val split (independent of the training seed)", range=SEED)
    image_size: int = opt(224, "side of the square network input, in pixels", range=Range(8, 4096))
    augment: str = opt("default", "training augmentation: default (random resized crop / padded crop for "
                        "28x28, + flip), flip (flip only), none; or a torchvision preset on top of default: "
                        "randaugment, trivialaugment, autoaugment",
                        ("default", "flip", "none", "randaugment", "trivialaugment", "autoaugment"))
    random_erasing: float = opt(0.0, "random erasing (torchvision RandomErasing) of each training image with this "
                                "probability, filled with the mean colour; 0: off, e.g. 0.25", range=Range(0, 1))
    normalize: str = opt("auto", "input normalisation: auto (the layout's: ImageNet's for photos, the data set's "
                         "published one for Fashion-MNIST), imagenet, or dataset (mean/std of the training split, "
                         "computed once and cached; stored in checkpoints and exports)",
                         ("auto", "imagenet", "dataset"))
    batch_size: int = opt(128, "images per batch (per process)", range=Range(1, 2**20))
    num_workers: int = opt(-1, "data loading processes; -1 picks min(4, CPU cores), 0 loads in the main process",
                            range=Range(-1, 1024), changes="resume")
    cache: bool = opt(False, "decode images once into a packed uint8 cache (<data root>/.dogcat-cache, built on "
                      "first use, rebuilt when files change) and train/evaluate from it; see `dogcat prepare`")
    cache_dir: Optional[str] = opt(None, "folder for packed caches; default <data root>/.dogcat-cache, or "
                                   "~/.cache/dogcat/packed when the data root is read-only", local=True)
    sampler: str = opt("shuffle", "training order: shuffle (each image once an epoch) or balanced (each class "
                       "drawn equally often, images with replacement; as resumable and DDP-sharded)",
                       ("shuffle", "balanced"))
    in_memory_mb: int = opt(1024, "read a packed cache into RAM (one uint8 tensor) when it fits in this many MiB; "
                            "0: always memory-map it", range=Range(0, COUNT), changes="resume")


@dataclass
class ModelConfig:
    model: str = opt("squeezenet", "architecture: see `dogcat models`; also timm:<name>, torchvision:<name>")
    pretrained: Optional[str] = opt(None, "pretrained backbone: a local weight file, or 'hub' to download",
                                     changes="resume")
    load_model_path: Optional[str] = opt(None, "weights or checkpoint to start from (train) or to evaluate "
                                          "(val/test)", changes="resume")
    load_not_strict: bool = opt(False, "load_model_path may match the model only partly (reports what matched)")
    freeze_backbone: bool = opt(False, "train only the classifier head (the original pytorch-book project's "
                                "SqueezeNet fine-tuning); the same as --freeze=backbone")
    freeze: str = opt("none", "frozen parameters: none, backbone (all but the classifier head) or N (the first N "
                      "parameter groups of the backbone: timm's stem/stages, else the model's top-level layers); "
                      "their BatchNorm stays in eval mode")
    unfreeze_at: int = opt(0, "with --freeze: train the whole model from this epoch on (1-based; the backbone at "
                           "lr x backbone_lr_mult); 0: never", range=Range(0, COUNT))
    cache_features: bool = opt(False, "with --freeze=backbone and --augment=none: compute the backbone's features "
                               "of every image once (in memory) and train the head on them, validating on them too")
    backbone_lr_mult: float = opt(1.0, "learning-rate multiplier for the backbone (head gets lr)", range=Range(0))


@dataclass
class OptimConfig:
    optimizer: str = opt("adam", "a torch.optim optimizer, case-insensitive (sgd, adam, adamw, ...; not lbfgs, "
                                 "sparseadam or muon)")
    lr: float = opt(1e-3, "initial learning rate (the original pytorch-book project's 0.1 diverges with Adam)",
                      range=Range(0), changes="live")
    momentum: float = opt(0.9, "momentum, for optimizers that take one (sgd, rmsprop)", range=Range(0, 1))
    weight_decay: float = opt(1e-4, "weight decay", range=Range(0), changes="live")
    scheduler: str = opt("loss-rise", "lr schedule; loss-rise is the original pytorch-book project's: lr *= "
                         "lr_decay when the epoch loss rises",
                         ("loss-rise", "none", "step", "multistep", "cosine", "onecycle"))
    lr_decay: float = opt(0.95, "decay factor of loss-rise, and gamma of step / multistep",
                           range=Range(0, 1, lo_open=True))
    step_size: int = opt(10, "epochs between decays (scheduler=step)", range=Range(1, COUNT))
    milestones: list[int] = opt([], "epochs at which lr decays (scheduler=multistep), e.g. [30,60]",
                                 range=Range(0, COUNT))
    min_lr: float = opt(0.0, "final learning rate of scheduler=cosine", range=Range(0))
    onecycle_pct: float = opt(0.3, "scheduler=onecycle: fraction of all steps spent rising from lr/25 to lr "
                              "(then cosine down to lr/1e4); warmup_epochs, when set, gives the rise instead",
                              range=Range(0, 1, lo_open=True, hi_open=True))
    warmup_epochs: float = opt(0.0, "linear warm-up from 1% of lr, in (fractional) epochs, before any schedule",
                                range=Range(0, 1e6))
    accum_steps: int = opt(1, "gradient accumulation: batches per optimizer step", range=Range(1, 2**16))
    clip_grad_norm: Optional[float] = opt(None, "clip the gradient norm to this value",
                                           range=Range(0, lo_open=True), changes="live")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy targets, e.g. 0.1",
                                  range=Range(0, 1, hi_open=True))
    mixup: float = opt(0.0, "mixup alpha (timm Mixup, soft-target cross-entropy); 0: off, e.g. 0.2", range=Range(0))
    cutmix: float = opt(0.0, "cutmix alpha (timm Mixup); 0: off, e.g. 1.0; with --mixup too, one of them per batch",
                         range=Range(0))
    class_weights: str = opt("none", "weights of the classes in the loss: none, auto (inverse class frequency, "
                             "N / (C * n_class), logged) or one weight per class, e.g. 1,3")
    ema_decay: float = opt(0.0, "keep an EMA of the weights (timm ModelEmaV3) with this decay, e.g. 0.999; it is "
                           "validated, checkpointed (key 'ema') and used by val/test/predict/export; 0: off",
                           range=Range(0, 1, hi_open=True))


# experiment trackers --logger may name (each a backend registered in tracking/loggers.py; a test keeps the two equal)
LOGGERS = ("tensorboard", "mlflow", "wandb")


@dataclass
class TrainConfig:
    max_epoch: int = opt(10, "number of training epochs", range=Range(1, 10**6), changes="live")
    seed: int = opt(0, "seed of python, numpy, torch and loader workers", range=SEED)
    deterministic: bool = opt(False, "use deterministic algorithms (slower)")
    device: str = opt("auto", "auto (CUDA, MPS or XPU if use_gpu, else cpu), cpu, cuda[:N], mps, xpu[:N]",
                      changes="resume")
    use_gpu: bool = opt(True, "allow a GPU when device=auto", changes="resume")
    precision: str = opt("fp32", "fp32; bf16 autocast (CPU with AMX, recent GPUs); fp16 AMP with grad scaler (CUDA); "
                         "auto: a short timed probe of this model/size/batch picks fp32 or bf16/fp16 (cached in "
                         "~/.cache/dogcat/precision.json)", ("fp32", "bf16", "fp16", "auto"))
    channels_last: bool = opt(False, "NHWC memory layout (faster convolutions with bf16/fp16)")
    compile: bool = opt(False, "torch.compile the model (Module.compile: first steps are slow while it compiles)")
    nproc: int = opt(1, "processes on this machine: N > 1 relaunches the command under torchrun (DDP)",
                      range=Range(1, 1024), changes="resume")
    sync_bn: bool = opt(False, "under DDP, synchronise BatchNorm statistics across processes", changes="resume")
    lr_scaling: str = opt("none", "scale lr with the global batch (batch_size x processes x accum_steps) "
                          "relative to base_batch_size", ("none", "linear", "sqrt"))
    base_batch_size: int = opt(256, "the global batch at which lr is the given lr (lr_scaling)",
                                range=Range(1, COUNT))
    print_freq: int = opt(20, "log the training loss every N steps", range=Range(1, COUNT), changes="live",
                          experiment=False)
    debug_file: Optional[str] = opt(None, "trigger file: each new version of it stops a run on a terminal in the "
                                     "debugger, else writes a debug dump; default RUN/control/debug (the "
                                     "original pytorch-book project used /tmp/debug)", local=True)
    env: str = opt("default", "run name, the folder's name under runs_root; default: <model>-<timestamp>. "
                   "--env is an alias (the original pytorch-book project's visdom env)", changes="resume",
                   experiment=False, name="name")
    runs_root: str = opt("runs", "folder that holds run folders", local=True)
    run_dir: Optional[str] = opt(None, "the run's folder; default: <runs_root>/<env or model-timestamp>", local=True)
    resume: Optional[str] = opt(None, "continue a run exactly where its last checkpoint left it: its folder, or "
                                "'latest' (newest under runs_root)", changes="resume", experiment=False)
    save_every_steps: int = opt(0, "also checkpoint (last.pt) every N optimizer steps, to resume inside an epoch; "
                                 "0: off", range=Range(0, COUNT), changes="live")
    save_every_epochs: int = opt(0, "keep an archive checkpoint every N epochs (epoch-NNNN.pt); 0: off",
                                  range=Range(0, COUNT), changes="resume")
    keep_top_k: int = opt(3, "keep the k best epochs by --monitor as top-NNNN-<metric>.pt; 0: none",
                           range=Range(0, COUNT), changes="resume")
    max_steps: Optional[int] = opt(None, "stop (checkpointed, resumable) after this many optimizer steps in all",
                                    range=Range(1, 2**62), changes="live")
    limit_train_batches: int = opt(0, "train at most this many batches per epoch (per process), drawn from the "
                                   "epoch's shuffled order, as Lightning's option does; 0: all", range=Range(0, COUNT))
    limit_val_batches: int = opt(0, "validate on at most this many batches (per process), spread evenly over the "
                                 "validation set; 0: all. --dry-run sets both limits", range=Range(0, COUNT),
                                 changes="resume")
    nonfinite: str = opt("stop", "on a NaN/Inf loss or gradient: stop (keep the last good checkpoint, exit 3) or "
                         "skip the batch", ("stop", "skip"), changes="live")
    nonfinite_max_skips: int = opt(5, "with --nonfinite=skip: stop after this many non-finite batches in a row",
                                    range=Range(1, COUNT), changes="live")
    patience: int = opt(0, "early stopping: end the run (finished) after this many epochs without an improvement "
                        "of --monitor larger than --min-delta; 0: off", range=Range(0, COUNT),
                        changes="live")
    min_delta: float = opt(0.0, "early stopping: an improvement of --monitor must exceed this", range=Range(0),
                            changes="live")
    monitor: str = opt(DEFAULT_MONITOR, "metric that picks best.pt (and top-k); its direction comes from the metrics "
                       "table (dogcat/metrics.py)", monitors())
    embeddings_every: int = opt(0, "also write TensorBoard projector embeddings of the validation set every N "
                                 "epochs (always at the end of training); 0: at the end only", range=Range(0, COUNT),
                                 changes="resume", experiment=False)
    progress: str = opt("auto", "progress display: auto (bar on a terminal), bar, plain, none",
                        ("auto", "bar", "plain", "none"), changes="resume", experiment=False)
    logger: str = opt("tensorboard", "experiment trackers, a comma list of " + ", ".join(LOGGERS) + " (or none); "
                      "the same records as metrics.jsonl. mlflow / wandb need pip install "
                      "'dogcat-vision[mlflow]' / '[wandb]'", changes="resume", experiment=False)
    mlflow_uri: Optional[str] = opt(None, "MLflow tracking URI: a server (http://host:5000), sqlite:///FILE, or a "
                                    "file: store (file:DIR or a folder); default: the SQLite store "
                                    "<runs_root>/mlflow.db (beside the run folder)",
                                    local=True)
    mlflow_experiment: str = opt("dogcat", "MLflow experiment the run is logged under", changes="resume",
                                 experiment=False)
    wandb_project: str = opt("dogcat", "W&B project the run is logged under", changes="resume",
                             experiment=False)
    wandb_mode: str = opt("offline", "W&B mode: offline (files in RUN/wandb/, upload later with `wandb sync`) or "
                          "online (needs `wandb login`)", ("offline", "online"), changes="resume",
                          experiment=False)


@dataclass
class EvalConfig:
    # what val / test / predict do with a trained model: none of it changes a training, so a resume may change each
    checkpoint: str = opt("best", "which checkpoint of a run val/test/predict load", ("best", "last"), changes="resume")
    result_file: Optional[str] = opt(None, "submission CSV of `test`; default: <run>/submission.csv", local=True)
    positive_class: Optional[str] = opt(None, "class whose probability `test` writes for 2 classes; default dog or "
                                        "class 1", changes="resume")
    output: Optional[str] = opt(None, "predict: write CSV or JSON here (by extension) instead of a table", local=True)
    tta: bool = opt(False, "val/test/predict: average each image's probabilities with its horizontal flip's",
                    changes="resume")
    sample_submission: Optional[str] = opt(None, "test: check the CSV against this sample submission "
                                           "(header, ids, order); default: against the test folder", changes="resume")
    clip_probs: Optional[list[float]] = opt(None, "test: clip written probabilities to [a,b], e.g. 0.02,0.98 "
                                            "(log loss punishes confident mistakes)", range=Range(0, 1),
                                            changes="resume")
    top_k: Optional[int] = opt(None, "predict: also the K most probable classes and their probabilities",
                               range=Range(1, 2**20), changes="resume")
    calibration: bool = opt(True, "val/test/predict: softmax(logits / T), T from `dogcat calibrate` (no: raw)",
                            changes="resume")
    report: bool = opt(False, "val: also write RUN/report/index.html (curves, confusion matrix, per-class scores, "
                       "worst mistakes)", changes="resume")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = tuple(f.name for f in fields(Config))


def option_table() -> dict[str, tuple[str, Any]]:
    """Map every leaf name to ``(section, dataclass field)``. Leaf names are unique across sections."""
    table: dict[str, tuple[str, Any]] = {}
    for sec in fields(Config):
        for f in fields(sec.default_factory):  # type: ignore[arg-type]
            assert f.name not in table, f"duplicate option name {f.name}"
            table[f.name] = (sec.name, f)
    return table


OPTIONS = option_table()

# The option lists, derived from each option's facts (opt(changes=..., experiment=...)) and defined nowhere else.
# Options a running job may change (`dogcat ctl set`); anything else would need another setup. In declaration order.
LIVE = tuple(leaf for leaf, (_, f) in OPTIONS.items() if f.metadata["changes"] == "live")
# Options a resumed run may change (the live ones among them); the rest would make it another experiment.
RESUMABLE = frozenset(leaf for leaf, (_, f) in OPTIONS.items() if f.metadata["changes"] in ("live", "resume"))
# Options that name places or change the display, not the experiment: left out of hparams and run comparisons.
NOT_EXPERIMENT = frozenset(leaf for leaf, (_, f) in OPTIONS.items() if not f.metadata["experiment"])
# Places on this machine dogcat writes to or watches (``local``): only the command line or a library call sets them,
# never a recipe, a checkpoint's config, a sweep's search or anything else read from a file.
LOCAL = frozenset(leaf for leaf, (_, f) in OPTIONS.items() if f.metadata["local"])
# Command-line spellings other than the field's own: {"name": "env"}; the field's spelling stays an alias.
ALIASES = {f.metadata["name"]: leaf for leaf, (_, f) in OPTIONS.items() if f.metadata["name"]}
assert not set(ALIASES) & set(OPTIONS), "an option's name must not be another option's"


def flag(key: str) -> str:
    """The command-line spelling of an option: ``lr_decay`` -> ``--lr-decay``, ``env`` -> ``--name`` (its
    primary spelling); any other key (``optim.lr``, a command's own option) with dashes for underscores."""
    entry = OPTIONS.get(key)
    name = (entry[1].metadata["name"] if entry else None) or key
    return "--" + name.replace("_", "-")


def spellings(leaf: str) -> list[str]:
    """Every command-line spelling of an option, the primary one first (``--name``, ``--env``)."""
    own = "--" + leaf.replace("_", "-")
    return list(dict.fromkeys([flag(leaf), own]))


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """``{option: value}`` of a nested config dict (leaf names are unique across sections)."""
    return {k: v for sec in tree.values() if isinstance(sec, dict) for k, v in sec.items()}


def is_flag(leaf: str) -> bool:
    """True for a boolean option: ``--flag`` switches it on, ``--no-flag`` off."""
    return str(OPTIONS[leaf][1].type) == "bool"
