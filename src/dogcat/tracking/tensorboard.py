"""TensorBoard event files in the run folder: scalars, input grid, mistakes, confusion matrix, PR curve, hparams;
the ``tensorboard`` backend of ``--logger`` (the default).

Everything goes to one ``SummaryWriter`` on the run folder itself, hparams included (not the sub-folder
``add_hparams`` makes), so one run is one TensorBoard run and one HPARAMS session.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..config import NOT_EXPERIMENT, flat_config, to_dict, to_yaml
from ..console import escape, printable
from ..data import SeededItems
from ..metrics import per_class
from .collect import Collector, positive_class
from .figures import confusion_figure, denormalise, labelled_grid, to_array
from .loggers import Backend, Ending, Session, register_logger, scalar_tags
from .records import EVENT, KIND, STEP, TIME, is_kind

if TYPE_CHECKING:
    from ..preprocess import Preprocess

PER_CLASS_MAX = 50  # per-class precision / recall / F1 curves up to this many classes
# TensorBoard's hparams plugin statuses, by run status
SESSION_STATUS = {"finished": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "stopped": "STATUS_UNKNOWN",
                  "pruned": "STATUS_SUCCESS"}
GRID_IMAGES = 16


class TBLogger:
    """A SummaryWriter on ``run_dir``; ``purge_step`` (on resume) hides what a killed run logged after its
    last checkpoint, so the resumed curves continue as one."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run starts

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=10)
        self._keep_projector_config(run_dir)

    def _keep_projector_config(self, run_dir: Path) -> None:
        """A resumed run's writer would rewrite projector_config.pbtxt with only its own embeddings: start it
        from the file's (the writer keeps the config it rewrites in ``_projector_config``)."""
        path = run_dir / "projector_config.pbtxt"
        if path.is_file():
            from google.protobuf import text_format
            from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

            self.writer._projector_config = text_format.Parse(path.read_text(encoding="utf-8"), ProjectorConfig())

    def log_record(self, record: dict[str, Any]) -> None:
        step = int(record.get(STEP, 0))
        if is_kind(record, EVENT):  # ctl commands, resumes, skipped batches: where a run was steered
            detail = ", ".join(f"{k}={v}" for k, v in record.items() if k not in (KIND, EVENT, TIME))
            self.writer.add_text(f"events/{record.get(EVENT)}", printable(detail), step)
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
            if len(class_names) <= PER_CLASS_MAX:  # more classes: too many curves to read; result.json has them
                for name, scores in zip(class_names, per_class(stats["confusion"])):
                    for key in ("precision", "recall", "f1"):
                        self.writer.add_scalar(escape(f"val_class/{key}/{name}"), scores[key], step)
        if collect is None:
            return
        mistakes = collect.mistakes()
        if mistakes:
            grid = labelled_grid(mistakes, class_names, mean, std)
            self.writer.add_image("val/misclassified", grid, step, dataformats="HWC")
            rows = "\n".join(f"| {escape(m.id)} | {escape(class_names[m.label])} | {escape(class_names[m.pred])} | "
                             f"{m.confidence:.3f} |" for m in mistakes)  # names escaped: one table row each
            self.writer.add_text("val/misclassified", printable("| id | true | predicted | p(predicted) |\n"
                                                                "|---|---|---|---|\n" + rows), step)
        if len(class_names) == 2 and not collect.truncated and len(collect.labels):
            pos = positive_class(class_names)
            self.writer.add_pr_curve(escape(f"val/pr_curve_{class_names[pos]}"), (collect.labels == pos).int(),
                                     collect.probs[:, pos], step)
        self.writer.flush()

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> str | None:
        """The model graph (TensorBoard's Graphs tab); None, or why it was skipped."""
        from .embeddings import trace_graph

        reason = trace_graph(self.writer, model, example)
        self.writer.flush()
        return reason

    def embeddings(self, step: int, features: torch.Tensor, labels: list[int], preds: list[int],
                   thumbs: torch.Tensor, class_names: list[str]) -> None:
        """Penultimate features for the projector, labelled (true, predicted class) with thumbnails."""
        meta = [[escape(class_names[y]), escape(class_names[p])] for y, p in zip(labels, preds)]  # TSV: one line
        self.writer.add_embedding(features, metadata=meta, label_img=thumbs, global_step=step,
                                  tag="val_penultimate", metadata_header=["label", "predicted"])
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


def sample_inputs(dataset: Any, seed: int, n: int = GRID_IMAGES) -> list[torch.Tensor]:
    """``n`` augmented training images spread over the data set. Each is drawn the way training draws it
    (``SeededItems``: its own seeded generator), so the global RNG, and exact resume, are untouched."""
    size = len(dataset)
    items = SeededItems(dataset)
    out = []
    for k in range(min(n, size)):
        i = k * size // min(n, size)
        item = items[(i, seed * 1_000_003 + i)]
        if item.image is not None:
            out.append(item.image)
    return out


class TensorBoardBackend(Backend):
    """TBLogger as a ``--logger`` backend: scalars of every record, validation pictures, the hparams session."""

    name = "tensorboard"

    def __init__(self, s: Session) -> None:
        # purge from the step after the checkpoint: that step's records were logged before it was saved
        purge = s.resume_step + 1 if s.resume_step is not None else None
        self.tb = TBLogger(s.run_dir, purge)
        tree = {sec: v for sec, v in to_dict(s.cfg).items() if sec != "eval"}  # eval options: not training's
        self.params = hparam_values({k: v for k, v in flat_config(tree).items() if k not in NOT_EXPERIMENT})
        if s.resume_step is None:
            self.tb.text("config", "```\n" + to_yaml(s.cfg) + "\n```")  # what config.yaml holds
            if s.bundle.train is not None:
                images = sample_inputs(s.bundle.train, s.cfg.train.seed)
                if images and images[0].dtype == torch.uint8 and s.bundle.batch_transform is not None:
                    # a uint8 path: its augmentation (crop, flip, a preset) runs per batch, seeded by the batch
                    images = list(s.bundle.batch_transform(torch.stack(images), s.cfg.train.seed).clone())
                self.tb.input_grid(images, s.bundle.pre.mean, s.bundle.pre.std)

    def log(self, record: dict[str, Any]) -> None:
        self.tb.log_record(record)

    def validation(self, step: int, stats: dict[str, Any], collect: Collector | None, pre: Preprocess) -> None:
        if stats:
            self.tb.validation(step, stats, collect, list(pre.classes), pre.mean, pre.std)

    def finish(self, end: Ending) -> None:
        self.tb.hparams(self.params, end.metrics, end.step, end.status)

    def close(self) -> None:
        self.tb.close()


@register_logger("tensorboard")
def open_tensorboard(s: Session) -> Backend:
    return TensorBoardBackend(s)
