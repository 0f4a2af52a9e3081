"""TensorBoard event files in the run folder: scalars, input grid, mistakes, confusion matrix, PR curve, hparams.

Everything goes to one ``SummaryWriter`` on the run folder itself, hparams included (not the sub-folder
``add_hparams`` makes), so one run is one TensorBoard run and one HPARAMS session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..console import printable
from .collect import Collector, positive_class
from .figures import confusion_figure, denormalise, labelled_grid, to_array

# metrics.jsonl keys -> TensorBoard tags; other numeric keys go under train/ (steps) or epoch/ (epochs)
STEP_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "images_per_s": "train/throughput"}
EPOCH_TAGS = {"train_loss": "epoch/train_loss", "lr": "epoch/lr", "train_images_per_s": "epoch/throughput",
              "epoch_seconds": "epoch/seconds"}
SKIP = {"kind", "step", "epoch", "time"}
# TensorBoard's hparams plugin statuses, by run status
SESSION_STATUS = {"finished": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "stopped": "STATUS_UNKNOWN",
                  "pruned": "STATUS_SUCCESS"}


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, by TensorBoard tag."""
    kind = record.get("kind")
    if kind not in ("step", "epoch"):
        return {}
    out = {}
    for k, v in record.items():
        if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if kind == "step":
            out[STEP_TAGS.get(k, f"train/{k}")] = float(v)
        elif k.startswith("val_"):
            out[f"val/{k[4:]}"] = float(v)
        else:
            out[EPOCH_TAGS.get(k, f"epoch/{k}")] = float(v)
    return out


class TBLogger:
    """A SummaryWriter on ``run_dir``; ``purge_step`` (on resume) hides what a killed run logged after its
    last checkpoint, so the resumed curves continue as one."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run starts

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=10)

    def log_record(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        if record.get("kind") == "event":  # ctl commands, resumes, skipped batches: where a run was steered
            detail = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("kind", "event", "time"))
            self.writer.add_text(f"events/{record.get('event')}", printable(detail), step)
            return
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        self.writer.add_text(tag, printable(markdown), step)

    def input_grid(self, images: list[torch.Tensor], mean: Sequence[float], std: Sequence[float],
                   step: int = 0) -> None:
        """Augmented training inputs, de-normalised, as the model sees them."""
        from torchvision.utils import make_grid

        if images:
            grid = make_grid([denormalise(x, mean, std) for x in images], nrow=8, padding=2)
            self.writer.add_image("train/augmented_inputs", grid, step)

    def validation(self, step: int, stats: dict[str, Any], collect: Collector | None, class_names: list[str],
                   mean: Sequence[float], std: Sequence[float]) -> None:
        """An epoch's pictures: confusion matrix, worst mistakes (captioned true / predicted), PR curve."""
        if "confusion" in stats:
            self.writer.add_image("val/confusion_matrix", to_array(confusion_figure(stats["confusion"], class_names)),
                                  step, dataformats="HWC")
        if collect is None:
            return
        mistakes = collect.mistakes()
        if mistakes:
            grid = labelled_grid(mistakes, class_names, mean, std)
            self.writer.add_image("val/misclassified", grid, step, dataformats="HWC")
            rows = "\n".join(f"| {m.id} | {class_names[m.label]} | {class_names[m.pred]} | {m.confidence:.3f} |"
                             for m in mistakes)
            self.writer.add_text("val/misclassified", printable("| id | true | predicted | p(predicted) |\n"
                                                                "|---|---|---|---|\n" + rows), step)
        if len(class_names) == 2 and not collect.truncated and len(collect.labels):
            pos = positive_class(class_names)
            self.writer.add_pr_curve(printable(f"val/pr_curve_{class_names[pos]}"), (collect.labels == pos).int(),
                                     collect.probs[:, pos], step)
        self.writer.flush()

    def hparams(self, values: dict[str, Any], metrics: dict[str, float], step: int, status: str) -> None:
        """The HPARAMS session: hyperparameters, the final metrics as scalars, and the run's end status."""
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, SESSION_END_INFO_TAG
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
        from torch.utils.tensorboard.summary import Summary, SummaryMetadata, hparams

        exp, ssi, _ = hparams(values, metrics)
        content = HParamsPluginData(session_end_info=SessionEndInfo(
            status=Status.Value(SESSION_STATUS.get(status, "STATUS_UNKNOWN"))), version=PLUGIN_DATA_VERSION)
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                      content=content.SerializeToString()))
        sei = Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=meta)])
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def hparam_values(flat: dict[str, Any]) -> dict[str, Any]:
    """Config values as the hparams plugin takes them: numbers and strings. Booleans, None and lists become
    text (the plugin would show a boolean as 0.0 / 1.0)."""
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v) for k, v in flat.items()}
