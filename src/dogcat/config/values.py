"""The options whose text becomes a typed value (``--class-weights``, ``--freeze``), each parsed by one function
here, so that the CLI, the recipe loader, the data and the engine read the same value (before, ``--class-weights``
had three parsers)."""

from __future__ import annotations

import math
from typing import Any, Literal, Union

from .options import ConfigError, flag


# --class-weights as a value: "auto", "none", or one finite weight >= 0 per class (not all 0)
ClassWeights = Union[Literal["auto", "none"], tuple[float, ...]]


def parse_class_weights(spec: str) -> ClassWeights:
    """``--class-weights`` as a typed value, the one parser of it: ``"auto"``, ``"none"`` or the weights as a
    tuple; anything else is one ConfigError line (their count is checked against the classes when the data
    is read, still before a run folder exists: ``data.balance.class_weights``)."""
    s = str(spec).strip().lower()
    if s in ("auto", "none"):
        return s  # type: ignore[return-value]
    try:
        ws = tuple(float(w) for w in s.split(","))
    except ValueError:
        ws = ()
    if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or not any(ws):
        raise ConfigError(f"option {flag('class_weights')}={spec!r} is not allowed: allowed is auto, none, or "
                          "comma-separated finite weights >= 0, one per class, not all 0 (e.g. 1,3)")
    return ws


def parse_freeze(spec: Any) -> Union[Literal["none", "backbone"], int]:
    """``--freeze`` as a typed value, the one parser of it: ``"none"``, ``"backbone"`` or a count N >= 1 of
    backbone parameter groups (``models/freeze.py`` says which); anything else is one ConfigError line."""
    s = str(spec).strip().lower()
    if s in ("none", "backbone"):
        return s  # type: ignore[return-value]
    if s.isdigit() and 1 <= int(s) <= 10_000:
        return int(s)
    raise ConfigError(f"option {flag('freeze')}={spec!r} is not allowed: allowed is none, backbone or a number N "
                      ">= 1 (the first N parameter groups of the backbone)")


def freeze_of(model: Any) -> Union[Literal["none", "backbone"], int]:
    """The freezing a ModelConfig asks for: ``--freeze``, or ``backbone`` for ``--freeze-backbone`` (kept as its
    older spelling)."""
    return "backbone" if model.freeze_backbone else parse_freeze(model.freeze)
