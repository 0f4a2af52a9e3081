"""One typed config tree: every option, its default and a one-line doc.

Layers, later wins: the dataclass defaults -> a YAML recipe (``--config=FILE``) -> ``--key=value``
overrides. Keys are accepted flat (``--lr``, the seed's fire style) or dotted (``--optim.lr``);
dashes and underscores are equal. OmegaConf does the merging and type checking; this module only
turns its errors into messages that name the key, the expected type and the value, or the choices.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .metrics import monitors


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


def opt(default: Any, doc: str, choices: tuple[str, ...] | None = None, range: Range | None = None,
        local: bool = False) -> Any:
    """A dataclass field carrying its documentation, allowed values (``choices`` or a numeric ``range``) and
    whether it is ``local``: a place on this machine dogcat writes to or watches, taken only from the command
    line or a library call, never from a recipe file or a checkpoint (they are data from elsewhere)."""
    meta = {"doc": doc, "choices": choices, "range": range, "local": local}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    # no static choices: layouts are a registry in data/, a layer above; a wrong name fails there, in one line
    dataset: str = opt("auto", "data layout: auto (detected from train_data_root / train_list) or a registered "
                       "layout; a wrong name lists them")
    train_data_root: Optional[str] = opt("./data/train/", "training images: Kaggle flat folder or class subfolders")
    val_data_root: Optional[str] = opt(None, "separate validation folder (folder layout); else val_split of train")
    test_data_root: Optional[str] = opt("./data/test", "test images: Kaggle test folder (N.jpg) or any folder")
    train_list: Optional[str] = opt(None, "list file for training: CSV (path,label) or 'path label' lines")
    val_list: Optional[str] = opt(None, "list file for validation (same format)")
    test_list: Optional[str] = opt(None, "list file for test (labels optional)")
    fashion_mnist_root: Optional[str] = opt(None, "folder with Fashion-MNIST IDX files; default: Debian's, else download")
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
                            range=Range(-1, 1024))
    cache: bool = opt(False, "decode images once into a packed uint8 cache (<data root>/.dogcat-cache, built on "
                      "first use, rebuilt when files change) and train/evaluate from it; see `dogcat prepare`")
    cache_dir: Optional[str] = opt(None, "folder for packed caches; default <data root>/.dogcat-cache, or "
                                   "~/.cache/dogcat/packed when the data root is read-only", local=True)
    sampler: str = opt("shuffle", "training order: shuffle (each image once an epoch) or balanced (each class "
                       "drawn equally often, images with replacement; as resumable and DDP-sharded)",
                       ("shuffle", "balanced"))
    in_memory_mb: int = opt(1024, "read a packed cache into RAM (one uint8 tensor) when it fits in this many MiB; "
                            "0: always memory-map it", range=Range(0, COUNT))


@dataclass
class ModelConfig:
    model: str = opt("squeezenet", "architecture: see `dogcat models`; also timm:<name>, torchvision:<name>")
    pretrained: Optional[str] = opt(None, "pretrained backbone: a local weight file, or 'hub' to download")
    load_model_path: Optional[str] = opt(None, "weights or checkpoint to start from (train) or to evaluate (val/test)")
    load_not_strict: bool = opt(False, "load_model_path may match the model only partly (reports what matched)")
    freeze_backbone: bool = opt(False, "train only the classifier head (the seed's SqueezeNet fine-tuning)")
    backbone_lr_mult: float = opt(1.0, "learning-rate multiplier for the backbone (head gets lr)", range=Range(0))


@dataclass
class OptimConfig:
    optimizer: str = opt("adam", "any torch.optim optimizer, case-insensitive (sgd, adam, adamw, ...)")
    lr: float = opt(1e-3, "initial learning rate (the seed's default of 0.1 diverges with Adam)", range=Range(0))
    momentum: float = opt(0.9, "momentum, for optimizers that take one (sgd, rmsprop)", range=Range(0, 1))
    weight_decay: float = opt(1e-4, "weight decay", range=Range(0))
    scheduler: str = opt("loss-rise", "lr schedule; loss-rise is the seed's: lr *= lr_decay when the epoch loss rises",
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
                                           range=Range(0, lo_open=True))
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
    max_epoch: int = opt(10, "number of training epochs", range=Range(1, 10**6))
    seed: int = opt(0, "seed of python, numpy, torch and loader workers", range=SEED)
    deterministic: bool = opt(False, "use deterministic algorithms (slower)")
    device: str = opt("auto", "auto (CUDA when available and use_gpu), cpu, cuda or cuda:N")
    use_gpu: bool = opt(True, "allow the GPU when device=auto")
    precision: str = opt("fp32", "fp32; bf16 autocast (CPU with AMX, recent GPUs); fp16 AMP with grad scaler (CUDA); "
                         "auto: a short timed probe of this model/size/batch picks fp32 or bf16/fp16 (cached in "
                         "~/.cache/dogcat/precision.json)", ("fp32", "bf16", "fp16", "auto"))
    channels_last: bool = opt(False, "NHWC memory layout (faster convolutions with bf16/fp16)")
    compile: bool = opt(False, "torch.compile the model (Module.compile: first steps are slow while it compiles)")
    nproc: int = opt(1, "processes on this machine: N > 1 relaunches the command under torchrun (DDP)",
                      range=Range(1, 1024))
    sync_bn: bool = opt(False, "under DDP, synchronise BatchNorm statistics across processes")
    lr_scaling: str = opt("none", "scale lr with the global batch (batch_size x processes x accum_steps) "
                          "relative to base_batch_size", ("none", "linear", "sqrt"))
    base_batch_size: int = opt(256, "the global batch at which lr is the given lr (lr_scaling)",
                                range=Range(1, COUNT))
    print_freq: int = opt(20, "log the training loss every N steps", range=Range(1, COUNT))
    debug_file: Optional[str] = opt(None, "trigger file: each new version of it stops a run on a terminal in the "
                                     "debugger, else writes a debug dump; default RUN/control/debug (the "
                                     "seed used /tmp/debug)", local=True)
    env: str = opt("default", "run name (the seed's visdom env); default: <model>-<timestamp>")
    runs_root: str = opt("runs", "folder that holds run folders", local=True)
    run_dir: Optional[str] = opt(None, "the run's folder; default: <runs_root>/<env or model-timestamp>", local=True)
    resume: Optional[str] = opt(None, "continue a run exactly where its last checkpoint left it: its folder, or "
                                "'latest' (newest under runs_root)")
    save_every_steps: int = opt(0, "also checkpoint (last.pt) every N optimizer steps, to resume inside an epoch; "
                                 "0: off", range=Range(0, COUNT))
    save_every_epochs: int = opt(0, "keep an archive checkpoint every N epochs (epoch-NNNN.pt); 0: off",
                                  range=Range(0, COUNT))
    keep_top_k: int = opt(3, "keep the k best epochs by --monitor as top-NNNN-<metric>.pt; 0: none",
                           range=Range(0, COUNT))
    max_steps: Optional[int] = opt(None, "stop (checkpointed, resumable) after this many optimizer steps in all",
                                    range=Range(1, 2**62))
    nonfinite: str = opt("stop", "on a NaN/Inf loss or gradient: stop (keep the last good checkpoint, exit 3) or "
                         "skip the batch", ("stop", "skip"))
    nonfinite_max_skips: int = opt(5, "with --nonfinite=skip: stop after this many non-finite batches in a row",
                                    range=Range(1, COUNT))
    patience: int = opt(0, "early stopping: end the run (finished) after this many epochs without an improvement "
                        "of --monitor larger than --min-delta; 0: off", range=Range(0, COUNT))
    min_delta: float = opt(0.0, "early stopping: an improvement of --monitor must exceed this", range=Range(0))
    monitor: str = opt("val_accuracy", "metric that picks best.pt (and top-k); its direction comes from the metrics "
                       "table (dogcat/metrics.py)", monitors())
    embeddings_every: int = opt(0, "also write TensorBoard projector embeddings of the validation set every N "
                                 "epochs (always at the end of training); 0: at the end only", range=Range(0, COUNT))
    progress: str = opt("auto", "progress display: auto (bar on a terminal), bar, plain, none",
                        ("auto", "bar", "plain", "none"))
    logger: str = opt("tensorboard", "experiment trackers, a comma list of " + ", ".join(LOGGERS) + " (or none); "
                      "the same records as metrics.jsonl. mlflow / wandb need pip install "
                      "'dogcat-vision[mlflow]' / '[wandb]'")
    mlflow_uri: Optional[str] = opt(None, "MLflow tracking URI: a server (http://host:5000), sqlite:///FILE, or a "
                                    "file: store; default: file store <runs_root>/mlruns (beside the run folder)",
                                    local=True)
    mlflow_experiment: str = opt("dogcat", "MLflow experiment the run is logged under")
    wandb_project: str = opt("dogcat", "W&B project the run is logged under")
    wandb_mode: str = opt("offline", "W&B mode: offline (files in RUN/wandb/, upload later with `wandb sync`) or "
                          "online (needs `wandb login`)", ("offline", "online"))


@dataclass
class EvalConfig:
    checkpoint: str = opt("best", "which checkpoint of a run val/test/predict load", ("best", "last"))
    result_file: Optional[str] = opt(None, "submission CSV of `test`; default: <run>/submission.csv", local=True)
    positive_class: Optional[str] = opt(None, "class whose probability `test` writes for 2 classes; default dog or class 1")
    output: Optional[str] = opt(None, "predict: write CSV or JSON here (by extension) instead of a table", local=True)
    tta: bool = opt(False, "val/test/predict: average each image's probabilities with its horizontal flip's")
    sample_submission: Optional[str] = opt(None, "test: check the CSV against this sample submission "
                                           "(header, ids, order); default: against the test folder")
    clip_probs: Optional[list[float]] = opt(None, "test: clip written probabilities to [a,b], e.g. 0.02,0.98 "
                                            "(log loss punishes confident mistakes)", range=Range(0, 1))
    report: bool = opt(False, "val: also write RUN/report/index.html (curves, confusion matrix, per-class scores, "
                       "worst mistakes)")


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

# options that name places or change the display, not the experiment: left out of hparams and run comparisons
NOT_EXPERIMENT = {"resume", "run_dir", "runs_root", "env", "debug_file", "progress", "print_freq", "logger",
                  "mlflow_uri", "mlflow_experiment", "wandb_project", "wandb_mode", "embeddings_every"}


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """``{option: value}`` of a nested config dict (leaf names are unique across sections)."""
    return {k: v for sec in tree.values() if isinstance(sec, dict) for k, v in sec.items()}


def is_flag(leaf: str) -> bool:
    """True for a boolean option: ``--flag`` switches it on, ``--no-flag`` off."""
    return str(OPTIONS[leaf][1].type) == "bool"


def _norm(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_").lower()


def resolve_key(key: str) -> str:
    """Return the dotted path of a flat or dotted option name, or raise naming the closest names."""
    k = _norm(key)
    leaf = k.split(".")[-1]
    if leaf in OPTIONS and (k == leaf or k == f"{OPTIONS[leaf][0]}.{leaf}"):
        return f"{OPTIONS[leaf][0]}.{leaf}"
    names = list(OPTIONS) + [f"{s}.{n}" for n, (s, _) in OPTIONS.items()]
    close = difflib.get_close_matches(k, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
    raise ConfigError(f"unknown option --{key.lstrip('-')}{hint} (`dogcat help` lists all options)")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a YAML mapping that may be nested by section or flat."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        nk = _norm(str(k))
        if nk in SECTIONS and isinstance(v, dict) and not prefix:
            out.update(_flatten(v, nk + "."))
        else:
            out[prefix + nk] = v
    return out


def _coerce(path: str, value: Any) -> Any:
    """Turn the string spellings of the command line (and of YAML strings) into values: None for options that
    can be None, lists from ``a,b`` or ``[a,b]``. Numbers and booleans stay strings here: OmegaConf converts
    ``"0.1"`` for a float option and ``"false"`` for a bool one, and names the option when it cannot."""
    sec, leaf = path.split(".")
    f = OPTIONS[leaf][1]
    optional = str(f.type).startswith("Optional")
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None  # only for options that can be None: --augment=none and --scheduler=none are choices
    if isinstance(value, str) and str(f.type).replace("Optional[", "").startswith("list"):
        return [yaml.safe_load(v) for v in value.strip().strip("[]").split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and str(f.type) == "str":  # YAML's [1, 3] for a "1,3" option
        return ",".join(str(v) for v in value)
    return value


def _type_name(f: Any) -> str:
    t = str(f.type)
    return f"{t[len('Optional['):-1]} or None" if t.startswith("Optional[") else t  # keeps list[float]'s "]"


def _apply(cfg: DictConfig, items: dict[str, Any], source: str) -> None:
    for key, value in items.items():
        try:
            path = resolve_key(key)
        except ConfigError as e:
            raise ConfigError(f"{e} [{source}]") from None
        value = _coerce(path, value)
        try:
            OmegaConf.update(cfg, path, value, merge=False)
        except OmegaConfBaseException as e:
            f = OPTIONS[path.split(".")[1]][1]
            raise ConfigError(
                f"option --{path.split('.')[1].replace('_', '-')} ({source}) expects {_type_name(f)}, "
                f"got {value!r}") from e


def _check_choices(cfg: DictConfig) -> None:
    for leaf, (sec, f) in OPTIONS.items():
        choices = f.metadata.get("choices")
        value = cfg[sec][leaf]
        if choices and value is not None:
            low = str(value).lower()
            if low not in choices:
                raise ConfigError(f"option --{leaf.replace('_', '-')}={value!r} is not one of: {', '.join(choices)}")
            cfg[sec][leaf] = low


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def _check_ranges(cfg: DictConfig) -> None:
    """Every numeric option against the ``range`` in its metadata (list options: each element); floats must
    be finite. YAML, the command line, ``dogcat ctl set`` and a resume all pass through here."""
    for leaf, (sec, f) in OPTIONS.items():
        allowed: Range | None = f.metadata.get("range")
        value = cfg[sec][leaf]
        if allowed is None or value is None:
            continue
        is_list, is_float = OmegaConf.is_list(value), "float" in str(f.type)
        for v in (list(value) if is_list else [value]):
            if (is_float and not math.isfinite(v)) or v not in allowed:
                shown = list(value) if is_list else value
                raise ConfigError(f"option --{leaf.replace('_', '-')}={shown} is out of range: allowed is "
                                  f"{'a finite number' if is_float else 'an integer'} in {allowed}"
                                  + (" (each element)" if is_list else ""))


def _check_values(cfg: DictConfig) -> None:
    """Checks that need more than a type: ranges, names. (The optimizer's name is checked against torch.optim
    by ``engine.optim.check_optimizer`` before a run starts: this module does not load torch.)"""
    _check_ranges(cfg)
    env = cfg.train.env
    if not RUN_NAME.fullmatch(env):
        raise ConfigError(f"option --env={env!r} is not a plain run name: allowed are letters, digits, '.', '_', "
                          "'-' and '+', starting with a letter or digit, at most 100 characters (it names a folder "
                          "inside --runs-root; pass --run-dir=PATH for a folder elsewhere)")
    cfg.train.logger = logger_list(cfg.train.logger)
    _check_class_weights(cfg.optim.class_weights)
    clip = cfg.eval.clip_probs
    if clip is not None and not (len(clip) == 2 and 0.0 <= clip[0] < clip[1] <= 1.0):
        raise ConfigError(f"option --clip-probs expects two numbers a,b with 0 <= a < b <= 1 (e.g. 0.02,0.98), "
                          f"got {list(clip)}")


def logger_list(spec: str) -> str:
    """``--logger`` normalised: lower case, no blanks or repeats, in the order given; ``none`` (or empty) alone
    means no tracker. A name outside :data:`LOGGERS` is one ConfigError line."""
    names = list(dict.fromkeys(n.strip().lower() for n in str(spec).split(",") if n.strip()))
    if names in ([], ["none"]):
        return "none"
    if "none" in names:
        raise ConfigError(f"option --logger={spec!r}: none means no tracker and goes alone")
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ConfigError(f"option --logger={spec!r}: unknown tracker {', '.join(map(repr, bad))}; a comma list of "
                          f"{', '.join(LOGGERS)}, or none")
    return ",".join(names)


def _check_class_weights(spec: str) -> None:
    """``--class-weights``: auto, none or finite weights >= 0, not all 0 (their count is checked against the
    classes when the data is read, still before a run folder exists)."""
    s = str(spec).strip().lower()
    if s in ("auto", "none"):
        return
    try:
        ws = [float(w) for w in s.split(",")]
    except ValueError:
        ws = []
    if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or not any(ws):
        raise ConfigError(f"option --class-weights={spec!r} is not allowed: allowed is auto, none, or "
                          "comma-separated finite weights >= 0, one per class, not all 0 (e.g. 1,3)")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--lr=0.1', '--use-gpu']`` -> ``{'lr': '0.1', 'use_gpu': True}``: values stay strings, which
    :func:`load_config` converts by each option's type (``--env=2024`` stays the name "2024")."""
    out: dict[str, Any] = {}
    for a in args:
        if not a.startswith("--"):
            raise ConfigError(f"expected --key=value, got {a!r}")
        key, eq, raw = a[2:].partition("=")
        out[key] = raw if eq else True  # a bare flag switches a boolean on, as fire does
    return out


def _drop_local(tree: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """``tree`` without the ``local`` options (places dogcat writes to or watches): a recipe file or a checkpoint
    is data from elsewhere and does not choose them. With ``warn``, one warning per value set that is not the
    default (a run's own config.yaml, read again on resume, holds them all)."""
    out = {}
    for key, value in tree.items():
        f = OPTIONS.get(str(key).split(".")[-1], (None, None))[1]
        if f is None or not f.metadata.get("local"):
            out[key] = value
        elif warn and value is not None and value != f.default:
            import warnings

            flag = f"--{f.name.replace('_', '-')}"
            warnings.warn(f"{source}: {flag}={value!r} ignored: a recipe does not choose where dogcat writes; "
                          f"pass {flag} on the command line")
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe; a missing, unreadable or non-mapping file is one ConfigError line."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"--config expects a YAML file name, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {str(path)!r}")
    try:
        tree = yaml.safe_load(path.read_bytes()[: 16 << 20].decode("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--config: {path} is not a readable YAML file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"--config: {path} is not a YAML mapping (it holds a {type(tree).__name__})")
    return tree


def load_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                base: Config | dict | None = None, source: str = "on the command line",
                recipe: dict[str, Any] | None = None) -> Config:
    """Build the resolved config: defaults (or ``base``) -> YAML file -> overrides, validated. ``source``
    names where the overrides came from, for the messages. ``recipe``: the mapping of ``config_file`` when
    the caller has read it already (a sweep's space file, less its ``search`` block)."""
    cfg = OmegaConf.structured(Config)
    if base is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.structured(base) if is_dataclass(base) else base)
    if config_file is not None:
        flat = _flatten(read_recipe(config_file) if recipe is None else recipe)
        dump = len(flat) == len(OPTIONS)  # a whole resolved config (a run's config.yaml): its places are its run's
        _apply(cfg, _drop_local(flat, f"{config_file}", warn=not dump), f"in {config_file}")
    _apply(cfg, overrides or {}, source)
    _check_choices(cfg)
    _check_values(cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj


def as_config(cfg: Config | str | Path | dict | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """What the library functions accept as a config: a :class:`Config`, a YAML recipe's path, a dict of
    options, or None (the defaults), each with keyword ``overrides`` on top; always validated."""
    if isinstance(cfg, (str, Path)):
        return load_config(overrides, config_file=cfg)
    if isinstance(cfg, dict):
        return load_config({**cfg, **(overrides or {})})
    return load_config(overrides, base=cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (JSON/YAML safe)."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out


def from_dict(tree: Any, source: str = "a stored config") -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. stored in a checkpoint). Unknown keys and bad values
    fail naming ``source``; ``local`` options (output places) are not taken from it."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the stored config is a {type(tree).__name__}, not a mapping")
    try:
        return load_config(base=None, overrides=_drop_local(_flatten(tree), source, warn=False), source=f"in {source}")
    except ConfigError as e:
        raise ConfigError(str(e) if source in str(e) else f"{e} (in {source})") from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (a run's config.yaml; io.write_config writes it atomically)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def help_text() -> str:
    """Every option, grouped by section, with default, choices and doc."""
    lines = []
    for sec in fields(Config):
        lines.append(f"\n{sec.name}:")
        for f in fields(sec.default_factory):  # type: ignore[arg-type]
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            choices = f.metadata.get("choices")
            allowed = f.metadata.get("range")
            doc = f.metadata["doc"] + (f" [{'|'.join(choices)}]" if choices else "") + (f" {allowed}" if allowed else "")
            lines.append(f"  --{f.name.replace('_', '-'):<20} {str(default):<14} {doc}")
    return "\n".join(lines)
