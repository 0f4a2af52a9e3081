"""Opening a training's run folder (:func:`open_run`): a new run's data, model and options are checked before
its folder exists (bad input leaves nothing behind); a resumed run's folder is locked and its latest readable
checkpoint loaded, with the options that changed since (:class:`Resume`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from ..config import Config, ConfigError, parse_class_weights, to_yaml
from ..data import DataBundle, class_weights
from ..data.multilabel import multilabel_weights
from ..io import atomic_write_text
from ..metrics import check_monitor
from ..models import pretrained_input
from ..tracking.run import Run, find_run
from ..tracking.tracker import check_loggers
from . import distributed
from .checkpoint import Checkpoints, checkpoint_preprocess
from .criterion import check_multilabel
from .distributed import Dist
from .given import CUSTOM, Given
from .optim import check_optimizer
from .resume import resume_changes

log = logging.getLogger("dogcat")


class Resume(NamedTuple):
    """A resumed run's latest checkpoint and the options that changed since (``{option: [old, new]}``)."""

    ckpt: dict[str, Any]
    changes: dict[str, list]


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
