"""Hyperparameter sweeps with Optuna (``pip install 'dogcat-vision[sweep]'``): ``space.py`` reads and checks a
search space, ``study.py`` runs trials as ordinary run folders, ``results.py`` summarises a study.

A layer above the engine and tracking (it trains and reads run folders). Importing this package loads
neither torch nor optuna; :func:`sweep` and :func:`show` do, when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DogcatError
from .space import PRUNERS


class MissingOptuna(DogcatError):
    """optuna is not installed; the CLI exits 2 with how to install it."""


def _need_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MissingOptuna("dogcat sweep needs optuna: pip install 'dogcat-vision[sweep]'") from None


def sweep(space_file: str | Path, **kw: Any) -> Any:
    """Run a sweep (see :func:`dogcat.sweep.study.sweep`)."""
    _need_optuna()
    from .study import sweep as run

    return run(space_file, **kw)


def show(folder: str | Path, storage: str | None = None) -> dict[str, Any]:
    """A sweep's trials, best trial, importances; writes its PNGs and best.yaml (see :mod:`.results`)."""
    _need_optuna()
    from .results import show as run

    return run(Path(folder), storage)


__all__ = ["PRUNERS", "MissingOptuna", "show", "sweep"]
