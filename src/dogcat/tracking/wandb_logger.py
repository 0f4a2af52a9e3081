"""The ``wandb`` backend of ``--logger``: one W&B run per dogcat run, written under the run folder.

``--wandb-mode=offline`` (the default: training never waits on a network) writes ``RUN/wandb/offline-run-*``,
which ``wandb sync`` uploads later; ``online`` streams to W&B (after ``wandb login``). ``--wandb-project``
names the project. The run's config is the flat config; every metrics.jsonl record is logged under the
trackers' tags (loggers.py) on its step; at the end the summary holds the final metrics and the status, and
the run folder's config.yaml, metrics.jsonl, manifest.json (and report/ when there is one) are saved with the
run. A resumed run continues the same W&B run (its id is kept in RUN/trackers.json); W&B drops the steps it
already has, so the curve after a resume starts where the old one ended.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from ..console import redact
from .loggers import Backend, Ending, Session, register_logger, scalar_tags
from .records import STEP

EXIT_CODE = {"finished": 0, "pruned": 0, "stopped": 0, "failed": 1}


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, s: Session) -> None:
        import wandb

        saved_id = s.saved.get("id")
        self.run_dir = s.run_dir
        argv, sys.argv = sys.argv, [redact(a) for a in sys.argv]  # W&B records the command line in its files
        try:
            self.run = self._init(wandb, s, saved_id)
        finally:
            sys.argv = argv
        self.last_step, self.ended = -1, False

    @staticmethod
    def _init(wandb: Any, s: Session, saved_id: str | None) -> Any:
        return wandb.init(
            project=s.cfg.train.wandb_project, name=s.run_dir.name, dir=str(s.run_dir),
            mode=s.cfg.train.wandb_mode, config=s.params, id=saved_id, resume="allow" if saved_id else None,
            allow_val_change=True,  # a resume may change some options (max_epoch, lr ...)
            settings=wandb.Settings(console="off", silent=True, save_code=False),  # dogcat logs its own console
        )

    def log(self, record: dict[str, Any]) -> None:
        tags = scalar_tags(record)
        step = int(record.get(STEP, 0))
        if tags and step >= self.last_step:  # W&B takes steps in order only; a resume's repeated ones: dropped
            self.run.log(tags, step=step)
            self.last_step = step

    def finish(self, end: Ending) -> None:
        self.run.summary.update({**{k.replace("hparam/", "final/"): v for k, v in end.metrics.items()},
                                 "status": end.status})
        files = Path(self.run.dir)  # what is in the W&B run's files/ folder is uploaded with it (wandb sync)
        for path in end.artifacts:  # copies, not wandb.save's links: the run folder may move before a sync
            if path.is_dir():
                shutil.copytree(path, files / path.name, dirs_exist_ok=True)
            else:
                shutil.copy2(path, files / path.name)
        self.ended = True
        self.run.finish(exit_code=EXIT_CODE.get(end.status, 1))

    def close(self) -> None:
        if self.run is not None and not self.ended:
            self.ended = True
            self.run.finish(exit_code=1)  # closed after an error: the W&B run ends as failed
        self.run = None

    def saved(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project} if self.run is not None else {}


@register_logger("wandb", package="wandb", extra="wandb")
def open_wandb(s: Session) -> Backend:
    return WandbBackend(s)
