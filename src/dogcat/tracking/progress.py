"""Progress display: a tqdm bar on a terminal (a widget in a notebook with ipywidgets, else a text bar), plain
lines elsewhere (CI, files, nohup). Progress is not a result: it goes to stderr, so ``dogcat predict ... >
out.txt`` captures results only. In a notebook, :class:`EpochTable` also shows the epochs' metrics as one HTML
table that grows in place (as fastai's does); the log's epoch lines are its text form everywhere else."""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from ..console import in_notebook, progress_bar

__all__ = ["EpochTable", "Progress", "epoch_table_html", "in_notebook"]


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``update(images)`` per batch, ``note(loss=...)`` when there is news; shows throughput and ETA either way."""

    def __init__(self, total: int, desc: str, mode: str = "auto", print_every: int = 20) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() or in_notebook() else "plain"
        self.mode, self.total, self.desc, self.every = mode, total, desc, max(1, print_every)
        self.step, self.images, self.t0 = 0, 0, time.perf_counter()
        self.postfix: dict[str, float] = {}
        self.bar = progress_bar()(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False) if mode == "bar" else None

    def note(self, **postfix: float) -> None:
        """Values (loss, lr) shown from now on."""
        self.postfix.update(postfix)

    def update(self, images: int) -> None:
        postfix = self.postfix
        self.step += 1
        self.images += images
        rate = self.images / max(1e-9, time.perf_counter() - self.t0)
        if self.bar is not None:
            self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in postfix.items()}, "img/s": f"{rate:.0f}"}, refresh=False)
            self.bar.update(1)
        elif self.mode == "plain" and (self.step % self.every == 0 or self.step == self.total):
            eta = (self.total - self.step) * (time.perf_counter() - self.t0) / self.step
            fields = " ".join(f"{k} {v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} step {self.step}/{self.total} {fields} {rate:.0f} img/s eta {_hms(eta)}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def throughput(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.t0)


_SKIP = {"kind", "step", "train_images_per_s", "val_count", "confusion"}  # records' fields that are no column


def _cell(key: str, value: Any) -> str:
    if key == "epoch_seconds" and isinstance(value, (int, float)):
        return _hms(value)[2:] if value < 3600 else _hms(value)
    if key == "lr" and isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def epoch_table_html(records: list[dict[str, Any]]) -> str:
    """The epoch records (metrics.jsonl's ``epoch`` rows) as an HTML table: epoch, the losses and metrics, lr, time;
    a column for every field any record has, in first-seen order."""
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in _SKIP and k not in columns and not isinstance(r[k], (dict, list))]
    head = "".join(f"<th>{html.escape('time' if c == 'epoch_seconds' else c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(c, r[c]) if c in r else ''}</td>" for c in columns) + "</tr>"
                   for r in records)
    return (f'<table border="1" class="dataframe dogcat-epochs"><thead><tr style="text-align: left;">{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table>")


class EpochTable:
    """In a Jupyter kernel, one live HTML table of the epochs' metrics: shown after the first epoch and updated in
    place after each (IPython's ``display(..., display_id=True)`` and ``update``). Elsewhere it does nothing."""

    def __init__(self, show: bool | None = None) -> None:
        self.show = in_notebook() if show is None else show
        self.records: list[dict[str, Any]] = []
        self.handle: Any = None

    def add(self, record: dict[str, Any]) -> None:
        if not self.show:
            return
        self.records.append(record)
        from IPython.display import HTML, display  # only inside a kernel, where IPython is loaded already

        page = HTML(epoch_table_html(self.records))
        if self.handle is None:
            self.handle = display(page, display_id=True)
        else:
            self.handle.update(page)
