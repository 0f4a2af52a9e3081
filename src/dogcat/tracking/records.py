"""metrics.jsonl's schema, in one place: the records a run logs (builders) and how readers pick them apart.

Each line is one JSON object with a ``kind``:

- ``step`` (every ``--print-freq`` optimizer steps): ``step``, ``epoch`` (1-based: the epoch it is in),
  ``train_loss`` (the mean since the last step record), ``lr``, ``images_per_s``;
- ``epoch`` (each epoch's end): ``epoch``, ``step``, ``train_loss``, ``train_images_per_s``, ``lr``,
  ``epoch_seconds`` and each validation metric of the metrics table as ``val_<name>`` (:data:`~dogcat.metrics.VAL`);
- ``event`` (something happened): ``event``, one of :data:`EVENTS`, and its own fields.

``Run.log`` adds ``time`` (Unix seconds) to each. Every writer builds its record here and every reader (the runs
table, the report's curves, the trackers' tags, the final metrics) uses these names, so the schema cannot drift
between them. :class:`RecordSink` is how records reach other places than the file (the trackers).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol

from ..metrics import VAL

KIND, TIME = "kind", "time"
STEP, EPOCH, EVENT = "step", "epoch", "event"  # the kinds; "step" and "epoch" are also the keys of the axes
TRAIN_LOSS, LR = "train_loss", "lr"
VAL_LOSS = VAL + "loss"
# what each event means (its fields)
EVENTS = {
    "setup": "the run's parts are built (world_size, global_batch, lr_scaling, lr)",
    "precision": "--precision=auto chose (chosen, seconds, cached, ...)",
    "classes": "training class counts and the loss's class weights (train_counts, class_weights, sampler)",
    "resume": "a resume started from a checkpoint (epoch, batch_in_epoch, step, changed, dropped_log_records)",
    "control": "a `dogcat ctl` command was applied (command, ok, message, ...)",
    "nonfinite_skip": "a batch with a NaN/Inf loss or gradient was skipped (step, epoch, batch, first_layer)",
    "early_stop": "early stopping ended the run (epoch, step, reason)",
    "pruned": "a sweep's pruner ended the run (epoch, step, reason)",
    "sweep": "the sweep recorded something about the trial's run (status, reason)",
    "calibrate": "`dogcat calibrate` stored a temperature in a checkpoint (checkpoint, global_step, temperature, "
                 "images, nll_before, nll_after, ece_before, ece_after, ece_bins)",
    "unfreeze": "--unfreeze-at: the frozen parameters train from this epoch on (epoch, step, parameters)",
    "features": "--cache-features computed the backbone's features once (train, val, shape, megabytes, seconds)",
}
# epoch-record keys that are timings or bookkeeping, not results (left out of a run's "final metrics")
VOLATILE = frozenset({TIME, KIND, STEP, "epoch_seconds", "train_images_per_s"})


def step_record(step: int, epoch: int, train_loss: float, lr: float, images_per_s: float) -> dict[str, Any]:
    """A logging step's record: the training loss over the window since the last one."""
    return {KIND: STEP, STEP: step, EPOCH: epoch, TRAIN_LOSS: train_loss, LR: lr, "images_per_s": images_per_s}


def epoch_record(epoch: int, step: int, train_loss: float, train_images_per_s: float, lr: float,
                 epoch_seconds: float, val: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's record: its training loss and speed, and each validation metric as ``val_<name>`` (``val``:
    the validation's results by bare name; the confusion matrix is left out, it is not a scalar)."""
    return {KIND: EPOCH, EPOCH: epoch, STEP: step, TRAIN_LOSS: train_loss, "train_images_per_s": train_images_per_s,
            LR: lr, "epoch_seconds": epoch_seconds, **{VAL + k: v for k, v in val.items() if k != "confusion"}}


def event_record(event: str, **fields: Any) -> dict[str, Any]:
    """An event's record; ``event`` is one of :data:`EVENTS` (a new event is declared there first)."""
    if event not in EVENTS:
        raise ValueError(f"unknown metrics.jsonl event {event!r}; declared: {', '.join(EVENTS)}")
    return {KIND: EVENT, EVENT: event, **fields}


def is_kind(record: Mapping[str, Any], kind: str) -> bool:
    return record.get(KIND) == kind


def is_event(record: Mapping[str, Any], event: str) -> bool:
    return record.get(KIND) == EVENT and record.get(EVENT) == event


def epochs(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The epoch records that say which epoch they are (an integer)."""
    return [dict(r) for r in records if is_kind(r, EPOCH) and isinstance(r.get(EPOCH), int)]


def val_name(key: str) -> str | None:
    """``val_accuracy`` -> ``accuracy``; None for a key that is not a validation metric."""
    return key[len(VAL):] if key.startswith(VAL) else None


def logged_after(record: Mapping[str, Any], step: int, epoch: int) -> bool:
    """Was ``record`` logged after a checkpoint at (``step``, ``epoch``)? Events are never (they are history:
    a resume keeps them); a step or epoch record past either counter is (the resumed run logs it again)."""
    if is_kind(record, EVENT):
        return False
    s, e = record.get(STEP, 0), record.get(EPOCH, 0)
    return (isinstance(s, (int, float)) and s > step) or (
        is_kind(record, EPOCH) and isinstance(e, (int, float)) and e > epoch)


class RecordSink(Protocol):
    """Where a run's records go besides metrics.jsonl (the trackers): ``Run.log`` hands each record to
    :meth:`log_record`, and ``Run.set_status`` the final status to :meth:`finish`. Defined here, below both
    the run folder's writer (run.py) and the trackers (tracker.py), so that neither needs the other."""

    def log_record(self, record: dict[str, Any]) -> None: ...

    def finish(self, status: str, error: BaseException | None = None) -> None: ...
