"""``train(cfg)``: open the run folder, build the parts, then each epoch ``train_one_epoch`` and ``validate``
(loop.py), log, checkpoint; repeat.

A run can stop at any optimizer-step boundary (signal, ``dogcat ctl stop``, ``--max-steps``) and resume
exactly: the checkpoint holds the :class:`TrainState` (the position inside the epoch), the loss sums so far and
every RNG's state, and the training order and augmentations are functions of (seed, epoch, position) (see
``ResumableSampler``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from ..config import Config, ConfigError, as_config, parse_class_weights, to_yaml
from ..control import StopFlag, TrainingStopped
from ..data import DataBundle, class_weights
from ..data.multilabel import multilabel_weights
from ..io import atomic_write_text, one_line
from ..metrics import check_monitor, format_confusion, format_per_label, metric, summary
from ..models import pretrained_input
from ..tracking.progress import EpochTable
from ..tracking.records import epoch_record, event_record
from ..tracking.run import Run, RunFolder, find_run
from ..tracking.tracker import Tracker, check_loggers
from . import distributed
from .checkpoint import Checkpoints, checkpoint_preprocess
from .commands import Stop
from .criterion import check_multilabel
from .distributed import Dist, unwrap
from .features import whole_model
from .given import CUSTOM, Given
from .trained import load_model
from .loop import Epoch, thaw, train_one_epoch, validate
from .meters import eval_meter
from .optim import check_optimizer
from .parts import Parts, build_parts, restore_run, write_checkpoint
from .resume import resume_changes
from .runtime import pick_device
from .state import TrainState
from .steering import Steering

log = logging.getLogger("dogcat")


class Resume(NamedTuple):
    """A resumed run's latest checkpoint and the options that changed since (``{option: [old, new]}``)."""

    ckpt: dict[str, Any]
    changes: dict[str, list]


@dataclass
class Result:
    """What a training returns; ``stopped`` when it ended early (``--max-steps``) and can be resumed;
    ``pruned``: the reason ``on_epoch`` gave for ending it early (status ``pruned``).

    ``result.model``: the trained ``nn.Module`` with the weights of the best checkpoint (EMA ones when kept),
    in eval mode; ``result.load()``: a ``dogcat.Classifier`` of it (``dogcat.train`` sets how, see
    ``inference.train``). A run of your own module loads into a copy of it."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    early_stop: str | None = None  # why early stopping ended the run (--patience); it is still finished
    pruned: str | None = None
    module: nn.Module | None = field(default=None, repr=False)  # the user's own module (train(model=module))
    opener: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    _model: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> nn.Module:
        """The best checkpoint's model (the last one when no epoch finished validation), loaded once."""
        if self._model is None:
            self._model = load_model(self.run_dir, module=copy.deepcopy(self.module) if self.module else None).model
        return self._model

    def load(self, **options: Any) -> Any:
        """A ``dogcat.Classifier`` of this run (``options``: ``checkpoint="last"``, ``device="cpu"``, ...)."""
        if self.opener is None:
            raise ConfigError(f"this Result came from dogcat.engine.trainer.train; use dogcat.load({str(self.run_dir)!r})")
        return self.opener(**options)


# Called after each epoch (rank 0, once the epoch is logged and checkpointed) with its metrics.jsonl record;
# a returned reason ends the run there, status "pruned" (a hyperparameter sweep's pruner: dogcat/sweep/study.py).
OnEpoch = Callable[[dict[str, Any]], "str | None"]


def train(cfg: Config | str | Path | dict | None = None, /, *, on_epoch: OnEpoch | None = None,
          **overrides: Any) -> Result:
    """Train as ``cfg`` says (a :class:`Config`, a YAML recipe's path, a dict of options or None for the
    defaults) with keyword ``overrides`` on top: ``train(model="resnet18", train_data_root="data/train")``.
    ``resume=RUN`` continues a run in its own folder where it stopped, from its own recorded config.
    ``on_epoch(record)`` may end the run after any epoch by returning a reason (see :data:`OnEpoch`).

    Python objects need no registering (engine/given.py): ``model=`` an ``nn.Module``, ``train_data=`` /
    ``val_data=`` a torch Dataset of ``(image, label)`` or a pandas DataFrame of paths and labels (columns
    ``path_column=`` / ``label_column=``, default path / label), ``classes=`` the class names."""
    given = Given.take(overrides)
    own = cfg is None and bool(overrides.get("resume"))  # the run's own config.yaml: its places are the run's
    if own:
        cfg = RunFolder(find_run(str(overrides["resume"]), str(overrides.get("runs_root", "runs")))).config
    cfg = as_config(cfg, overrides, run_config=own)
    d, device = distributed.setup(pick_device(cfg.train))
    try:
        run, resume, data = open_run(cfg, d, given)
        try:
            result = _tracked(cfg, run, data, d, device, resume, on_epoch, given.module)
            result.module = given.module
            return result
        finally:
            run.unlock()
    finally:
        distributed.shutdown(d)


def open_run(cfg: Config, d: Dist, given: Given | None = None) -> tuple[Run, Resume | None, DataBundle]:
    """``(run, what to resume from or None, data)``. A new run's data and the model's input are checked first,
    so bad input fails before a run folder exists; a resumed run is locked (one writer per run folder) and
    its latest readable checkpoint loaded."""
    given = given or Given()
    check_optimizer(cfg.optim.optimizer)
    if d.enabled and cfg.model.unfreeze_at:  # DDP registers the parameters that need gradients once, at wrapping
        raise ConfigError(f"option --unfreeze-at={cfg.model.unfreeze_at} works in one process only (DDP cannot add "
                          "parameters to train later); train the head first, then start a new run with "
                          "--load-model-path=RUN/checkpoints/last.pt")
    check_loggers(cfg)  # a tracker's missing package or silent server: one line, before a run folder exists
    if not cfg.train.resume:
        data = given.data(cfg.data, processes=d.world, model_input=model_input(cfg))
        given.check_model(cfg, data)  # and the weights it starts from: a bad file leaves no failed run folder
        check_options(cfg, data)
        created = Run.create(cfg) if d.main else None  # one run folder, made by rank 0, named to all
        run = created or Run(Path(distributed.broadcast(None, d)), writer=False)
        if created is not None:
            distributed.broadcast(str(created.path), d)
            given.record_data(cfg, created.folder.config, created.folder.splits)
        return run, None, data
    if cfg.model.model.startswith(CUSTOM) and given.module is None:
        raise ConfigError(f"this run trained your own module {cfg.model.model[len(CUSTOM):]}, which a config cannot "
                          "rebuild: pass it again, dogcat.train(resume=RUN, model=YourModule(), ...)")
    run = Run(find_run(cfg.train.resume, cfg.train.runs_root), writer=d.main).lock()
    try:
        ckpts = Checkpoints(run.ckpt_dir)
        if d.main:
            ckpts.clean_temps()  # ours to clean: the lock says no other process is writing here
        ckpt, _ = ckpts.load_latest()
        resume = Resume(ckpt, resume_changes(ckpt["config"], cfg))
        if cfg.train.max_steps and ckpt["state"]["global_step"] >= cfg.train.max_steps:
            log.info(f"--max-steps={cfg.train.max_steps} was reached before this resume; training on to max_epoch")
            cfg.train.max_steps = None
        if d.main:
            atomic_write_text(run.folder.config, to_yaml(cfg))
        data = given.data(cfg.data, processes=d.world, model_input=model_input(cfg, quiet=True))
        stored = list(checkpoint_preprocess(ckpt, "").classes)
        if list(data.pre.classes) != stored:
            raise ConfigError(f"the data's classes {list(data.pre.classes)} differ from the run's {stored}: resume "
                              "on the data it trained on")
        check_options(cfg, data)
        return run, resume, data
    except BaseException:
        run.unlock()
        raise


def model_input(cfg: Config, quiet: bool = False) -> dict[str, Any] | None:
    """A pretrained timm model's input (``models.pretrained_input``: mean, std, interpolation, crop fraction
    from its ``pretrained_cfg``), said in one line; ``--image-size`` stays the network input (a line says when
    the weights were trained at another size). None for other models or without ``--pretrained``."""
    got = pretrained_input(cfg.model.model, cfg.model.pretrained)
    if got is None or quiet:
        return got
    chosen = "--normalize=" + cfg.data.normalize + " wins" if cfg.data.normalize != "auto" else "used"
    log.info(f"{got['source']} pretrained input: mean {list(got['mean'])} std {list(got['std'])} ({chosen}), "
             f"{got['interpolation']} resize, crop fraction {got['crop_pct']:g}"
             + (f"; its weights were trained at {got['size']} px, this run uses --image-size={cfg.data.image_size}"
                if got["size"] != cfg.data.image_size else ""))
    return got


def check_options(cfg: Config, data: DataBundle) -> None:
    """Options whose allowed values depend on the data: ``--monitor`` (top-5 needs more than 5 classes, ROC-AUC
    2) and the number of ``--class-weights``. One line, exit 2, before a run folder exists."""
    names = list(data.pre.classes)
    why = check_monitor(cfg.train.monitor, len(names), data.pre.multilabel)
    if why is not None:
        raise ConfigError(why)
    if data.pre.multilabel:
        check_multilabel(cfg)
    weights = parse_class_weights(cfg.optim.class_weights)
    if isinstance(weights, tuple) and data.pre.multilabel:
        multilabel_weights(weights, None, 0, names)  # raises naming the count it needs
    elif isinstance(weights, tuple):
        class_weights(weights, None, names)  # raises naming the count it needs


def _tracked(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device,
             resume: Resume | None, on_epoch: OnEpoch | None = None, module: nn.Module | None = None) -> Result:
    """Train in the (locked) run folder, keeping its status and manifest up to date."""
    tracker = Tracker.start(run.folder, cfg, d, resume.ckpt["state"]["global_step"] if resume else None)  # rank 0's
    if tracker is not None:  # manifest.json, TensorBoard: every record and the final status reach it via the run
        run.sinks.append(tracker)
    run.set_status("running")
    try:
        with StopFlag() as signals:
            result = fit(cfg, run, data, d, device, signals, resume, on_epoch, tracker, module)
    except (KeyboardInterrupt, TrainingStopped) as e:
        _final_status(run, "stopped", e)
        raise
    except BaseException as e:
        _final_status(run, "failed", e)
        raise
    run.set_status("pruned" if result.pruned else "stopped" if result.stopped else "finished")
    return result


def _final_status(run: Run, status: str, error: BaseException) -> None:
    """Record how the run ended; failing to (the full disk that ended it) only warns: the run's error shows."""
    try:
        run.set_status(status, error)
    except Exception as e:  # noqa: BLE001
        log.warning(f"could not record status {status!r} in {run.path}: {one_line(e)}")


def fit(cfg: Config, run: Run, data: DataBundle, d: Dist, device: torch.device, signals: StopFlag,
        resume: Resume | None = None, on_epoch: OnEpoch | None = None, tracker: Tracker | None = None,
        module: nn.Module | None = None) -> Result:
    """Build the parts (around ``module``, a user's own, when given), put a resumed run back where it was, and
    run the epochs."""
    p = build_parts(cfg, run, data, d, device, resuming=resume is not None, module=module)
    p.tracker = tracker
    state = TrainState(world=d.world)
    if resume is not None:
        restore_run(p, state, *resume)
    if tracker is not None:  # data fingerprint; TensorBoard, purged after the checkpoint's step
        tracker.setup(p.data, str(device))
        tracker.model_graph(whole_model(unwrap(p.step.model)), device)
    debug_file = cfg.train.debug_file or str(run.folder.debug_trigger)
    steering = Steering(cfg, run.folder.control, d, device, signals, debug_file, run.log)
    try:
        return run_epochs(cfg, p, state, steering, on_epoch)
    finally:
        steering.close()


def run_epochs(cfg: Config, p: Parts, state: TrainState, steering: Steering, on_epoch: OnEpoch | None = None
               ) -> Result:
    """The epoch loop: train, validate, log, checkpoint; leaves early when asked to stop."""
    run, monitor, names = p.run, cfg.train.monitor, list(p.data.pre.classes)
    log.info(f"run folder: {run.path}")
    log.info(f"{cfg.model.model}: {sum(x.numel() for x in p.step.model.parameters()):,} parameters on "
             f"{p.runtime.device}, {len(p.data.train)} training / {len(p.data.val) if p.data.val else 0} "
             f"validation images, classes {names}")
    history, early = [], None
    table = EpochTable(show=None if p.runtime.dist.main else False)  # a notebook's live HTML table of the epochs
    while state.epoch < cfg.train.max_epoch:
        if state.patience_out(cfg.train.patience):  # read each epoch: `dogcat ctl set patience=N` counts
            early = _early_stop(cfg, state, run)
            break
        t0 = time.perf_counter()
        p.sampler.set_epoch(state.epoch, start=state.batch * cfg.data.batch_size)
        thaw(p, state, cfg)  # --unfreeze-at: frozen or not, as a function of the epoch
        epoch = train_one_epoch(p, state, steering, cfg)
        if epoch.stop is not None:  # last.pt was written at the step boundary
            return _stopped(p, state, epoch.stop, steering, history)
        record = _validate_and_log(cfg, p, state, epoch, t0)
        history.append(record)
        table.add(record)

        value = record.get(monitor)
        if value is None:  # no validation set: judge by the training loss, in the monitor's direction
            value = -record["train_loss"] if metric(monitor).higher_is_better else record["train_loss"]
        is_best = state.observe(monitor, value, cfg.train.min_delta)
        state.next_epoch()
        p.step.meter.reset()
        write_checkpoint(cfg, p, state, epoch_end=True, is_best=is_best, metric=record.get(monitor))
        if on_epoch is not None and (reason := _epoch_verdict(on_epoch, record, p)):
            return _pruned(p, state, reason, history)
    _report_bad_files(p)
    _log_best(cfg, p, state)
    return Result(run.path, state.best, state.best_epoch, history, early_stop=early)


def _validate_and_log(cfg: Config, p: Parts, state: TrainState, trained: Epoch, t0: float) -> dict[str, Any]:
    """The end of an epoch's training: validate, step the epoch scheduler, log the epoch record (metrics.jsonl,
    trackers, the console) and, when due, the projector's embeddings. Returns the record."""
    run, pre, tracker = p.run, p.data.pre, p.tracker
    names = list(pre.classes)
    collect = tracker.collector() if tracker is not None and not pre.multilabel else None  # mistakes, PR curve
    if collect is not None and p.features:
        collect.keep_images = 0  # the validation batches are features, not pictures to show
    val = validate(p.step.eval_model, p.val_loader, p.runtime, len(names), p.bad, p.progress,
                   cfg.train.print_freq, collect, eval_meter(names, pre.multilabel)) if p.val_loader else {}
    if pre.multilabel and val:  # this epoch's checkpoints carry the thresholds chosen on its validation
        p.data.pre = dataclasses.replace(pre, thresholds=tuple(val["thresholds"]))
    p.step.scheduler.epoch_end(trained.loss)
    record = epoch_record(state.epoch + 1, state.global_step, trained.loss, trained.images_per_s,
                          p.step.optimizer.param_groups[0]["lr"], time.perf_counter() - t0, val)
    run.log(record)
    if tracker is not None:
        tracker.epoch_end(state.global_step, val, collect)
    _print_epoch(record, val, names, cfg.train.max_epoch)
    every, epoch = cfg.train.embeddings_every, state.epoch + 1
    if tracker is not None and not pre.multilabel and (epoch == cfg.train.max_epoch or (every and epoch % every == 0)):
        tracker.embeddings(state.global_step, whole_model(unwrap(p.step.eval_model)), p.data.val, p.runtime.device,
                           cfg.data.batch_size)
    return record


def _log_best(cfg: Config, p: Parts, state: TrainState) -> None:
    monitor, where = cfg.train.monitor, p.run.ckpt_dir
    best = state.best if state.best is not None else float("nan")
    if p.val_loader is None:  # state.best holds the training loss, negated for a higher-is-better monitor
        loss = -best if metric(monitor).higher_is_better else best
        log.info(f"no validation set: best.pt is the epoch of the lowest training loss, {loss:.4f} at epoch "
                 f"{state.best_epoch}; checkpoints in {where}")
    else:
        log.info(f"best {monitor} {best:.4f} at epoch {state.best_epoch}; checkpoints in {where}")


def _early_stop(cfg: Config, state: TrainState, run: Run) -> str:
    """Log why early stopping ends the run (to the log and metrics.jsonl, where ``dogcat runs`` finds it)."""
    t = cfg.train
    best = f"{state.best:.4f}" if state.best is not None else "none"
    reason = (f"early stop after epoch {state.epoch}: {t.monitor} did not improve by more than {t.min_delta:g} "
              f"in {state.plateau_epochs} epochs (--patience={t.patience}); best {best} at epoch {state.best_epoch}")
    log.info(reason)
    run.log(event_record("early_stop", epoch=state.epoch, step=state.global_step, reason=reason))
    return reason


def _stopped(p: Parts, state: TrainState, stop: Stop, steering: Steering, history: list[dict]) -> Result:
    signals = steering.signals
    if signals is not None and signals.signum is not None:  # exit 128 + N, as a shell expects of a signal
        raise TrainingStopped(signals.signum, str(p.checkpoints.last))
    why = {"ctl": "dogcat ctl stop", "max_steps": "--max-steps"}.get(stop.why, "a signal to another process")
    log.info(f"stopped after step {state.global_step} ({why}); resume with --resume={p.run.path}")
    return Result(p.run.path, state.best, state.best_epoch, history, stopped=True)


def _epoch_verdict(on_epoch: OnEpoch, record: dict[str, Any], p: Parts) -> str | None:
    """Rank 0 asks ``on_epoch``; every rank gets its answer, so all stop at the same epoch."""
    d = p.runtime.dist
    return distributed.broadcast(on_epoch(record) if d.main else None, d)


def _pruned(p: Parts, state: TrainState, reason: str, history: list[dict]) -> Result:
    _report_bad_files(p)
    p.run.log(event_record("pruned", epoch=state.epoch, step=state.global_step, reason=reason))
    log.info(f"pruned after epoch {state.epoch}: {reason}")
    return Result(p.run.path, state.best, state.best_epoch, history, pruned=reason)


def _report_bad_files(p: Parts) -> None:
    for files in distributed.gather(p.bad.files, p.runtime.dist)[1:]:  # other ranks' bad files, to rank 0
        p.bad.add(list(files.items()))
    if p.bad.count:
        log.warning(f"{p.bad.count} unreadable image(s) were skipped; list in {p.run.folder.bad_files}")


def _print_epoch(record: dict, val: dict, class_names: list[str], max_epoch: int) -> None:
    msg = f"epoch {record['epoch']}/{max_epoch}: train loss {record['train_loss']:.4f}"
    if val:
        msg += ", " + summary(val, "val ")
    log.info(f"{msg}, lr {record['lr']:.3g}, {record['epoch_seconds']:.1f}s")
    if "confusion" in val:
        log.info(format_confusion(val["confusion"], class_names))
    if "per_label" in val:
        log.info(format_per_label(val["per_label"]))
