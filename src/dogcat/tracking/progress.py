"""Progress display: a tqdm bar on a terminal (a widget in a notebook), plain lines elsewhere (CI, files,
nohup). Progress is not a result: it goes to stderr, so ``dogcat predict ... > out.txt`` captures results only."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal, yet tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return type(ip).__name__ == "ZMQInteractiveShell"


class Progress:
    """``update(images)`` per batch, ``note(loss=...)`` when there is news; shows throughput and ETA either way."""

    def __init__(self, total: int, desc: str, mode: str = "auto", print_every: int = 20) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() or in_notebook() else "plain"
        self.mode, self.total, self.desc, self.every = mode, total, desc, max(1, print_every)
        self.step, self.images, self.t0 = 0, 0, time.perf_counter()
        self.postfix: dict[str, float] = {}
        self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False) if mode == "bar" else None

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
