"""Reading weight files safely and loading them strictly or partly (the template's ``load_not_strict``, done right).

Every ``torch.load`` uses ``weights_only=True``: a pickle that would run code is refused, not executed.
Accepted files: a dogcat checkpoint (``{"model": state_dict, "format_version": ...}``), a bare
``state_dict`` (what the template's ``BasicModule.save`` writes), common wrappers (``state_dict``,
``model_state_dict``) and ``.safetensors``. ``module.`` (DataParallel/DDP) and ``_orig_mod.``
(torch.compile) prefixes are handled in both directions.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.nn as nn

from ..config import DogcatError
from ..reading import TooComplex, check_tree

log = logging.getLogger("dogcat")


class WeightsError(DogcatError, ValueError):
    """A weight file that cannot be used; the message says why and what to do."""


class HubUnavailable(WeightsError):
    """``--pretrained=hub`` could not download the weights (no internet, a proxy, the server): an outside cause,
    exit 1; the message names the file to fetch elsewhere and pass as ``--pretrained=FILE``."""

    exit_code = 1


HUB_WORDS = ("hub", "true", "1", "yes")  # --pretrained values that mean "download the published weights"
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("dogcat_quiet_loads", default=False)


def is_hub(pretrained: str | None) -> bool:
    return bool(pretrained) and str(pretrained).lower() in HUB_WORDS


@contextlib.contextmanager
def quiet_loads() -> Iterator[None]:
    """Inside, :func:`load_weights` does not log what it loaded (a check before a run loads the files once more)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


T = TypeVar("T")


def fetch_hub(what: str, url: str, fetch: Callable[[], T]) -> T:
    """``fetch()`` the published weights ``what`` (from ``url``); a failure to reach the server is one
    :class:`HubUnavailable` line saying what to download and how to pass it, any other failure a WeightsError."""
    try:
        return fetch()
    except Exception as e:  # noqa: BLE001 - urllib, requests and huggingface_hub each raise their own types
        cause, seen = e, 0
        while cause is not None and not isinstance(cause, OSError) and seen < 8:
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        detail = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if isinstance(cause, OSError):  # URLError, ConnectionError, LocalEntryNotFoundError: the network
            raise HubUnavailable(
                f"--pretrained=hub downloads the weights of {what} from {url}, which needs the internet ({detail}). "
                "Without it: download that file on a machine that has it, copy it here and pass "
                "--pretrained=FILE") from None
        raise WeightsError(f"--pretrained=hub: the weights of {what} could not be loaded ({detail})") from None


@dataclass
class LoadReport:
    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file shape -> model shape"
    adapted: list[str] = field(default_factory=list)
    new_head: str = ""  # the model's head module when the file's head (another class count) was dropped

    def summary(self) -> str:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:4]) + (f", ... ({len(xs)})" if len(xs) > 4 else "")

        head = f"{self.new_head}."
        mismatched = [m for m in self.mismatched if not (self.new_head and m.startswith(head))]
        missing = [k for k in self.missing if not (self.new_head and k.startswith(head))]
        parts = [f"loaded {len(self.matched)} tensors from {self.source}"]
        if self.new_head:
            dropped = [m.split(":")[0] for m in self.mismatched if m.startswith(head)]
            parts.append(f"the classifier head is new (the file's {', '.join(dropped)} for another class count "
                         "dropped)")
        for name, xs in (("adapted", self.adapted), ("missing", missing),
                         ("unexpected", self.unexpected), ("shape-mismatched", mismatched)):
            if xs:
                parts.append(f"{name}: {few(xs)}")
        return "; ".join(parts)


def torch_load(path: str | Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``; a refusal or any failure to read is one
    :class:`WeightsError` line (random bytes make torch raise IndexError, ValueError, ...)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        check_tree(obj)  # a pickle's memo shares values: a small file may expand hugely once walked
        return obj
    except TooComplex as e:
        raise WeightsError(f"refused to load {path}: its stored values are {e}; not a dogcat checkpoint") from None
    except FileNotFoundError as e:
        raise WeightsError(f"no weight file at {path}") from e
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # a class or function the file wants built: that is code, refused
            raise WeightsError(
                f"refused to load {path}: it asks for the Python object {found.group(1)}, not just tensors and "
                "plain data, and unpickling it could run code. Only load files you trust; re-save the state_dict "
                "from trusted code.") from e
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.lower().startswith("unsupported")), lines[-1] if lines else "")
        raise WeightsError(f"cannot read weights from {path}: not a PyTorch file, or damaged "
                           f"(UnpicklingError: {detail[:200]})") from e
    except Exception as e:  # noqa: BLE001 - a damaged file may fail anywhere inside torch.load
        msg = " ".join(str(e).split())[:300]
        raise WeightsError(f"cannot read weights from {path}: not a PyTorch file, or damaged "
                           f"({type(e).__name__}: {msg})") from e


def read_state_dict(src: str | Path | dict) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(state_dict, description)`` from a path or an in-memory dict."""
    if isinstance(src, dict):
        obj, name = src, "state dict"
    else:
        path = Path(src)
        if not path.is_file():
            raise WeightsError(f"no weight file at {path}")
        name = str(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                return load_file(str(path)), name
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on damaged files
                raise WeightsError(f"cannot read weights from {path}: not a safetensors file, or damaged "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
        obj = torch_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{name} holds a {type(obj).__name__}, not a state_dict")
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{name} has no tensors")
    return sd, name


def _best_prefix_fit(sd: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Strip or add the wrapper prefix that makes most keys match the model's."""
    candidates = [sd]
    for p in ("module.", "_orig_mod.", "model."):
        if any(k.startswith(p) for k in sd):
            candidates.append({k[len(p):] if k.startswith(p) else k: v for k, v in sd.items()})
    if any(t.startswith("module.") for t in target):
        candidates.append({"module." + k: v for k, v in sd.items()})
    return max(candidates, key=lambda c: len(target & set(c)))


def load_weights(model: nn.Module, src: str | Path | dict, strict: bool = True, source: str | None = None,
                 adapt_channels: bool = False, head: str = "") -> LoadReport:
    """Load weights into ``model``. Strict: every key and shape must match. Non-strict: load what matches,
    report the rest, refuse when nothing matched. ``head``: the name of the model's classifier module, whose
    shape-mismatched keys (another class count) the report names as a dropped head, in its one line."""
    sd, name = read_state_dict(src)
    own = model.state_dict()
    sd = _best_prefix_fit(sd, set(own))
    rep = LoadReport(source=source or name)
    use: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in own:
            rep.unexpected.append(k)
        elif v.shape == own[k].shape:
            use[k] = v
        elif adapt_channels and v.ndim == 4 and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:]:
            from timm.models import adapt_input_conv

            use[k] = adapt_input_conv(own[k].shape[1], v)
            rep.adapted.append(f"{k}: {v.shape[1]} -> {own[k].shape[1]} input channels")
        else:
            rep.mismatched.append(f"{k}: {tuple(v.shape)} -> {tuple(own[k].shape)}")
    rep.matched = list(use)
    if head and any(m.startswith(f"{head}.") for m in rep.mismatched):
        rep.new_head = head
    rep.missing = [k for k in own if k not in use]
    if strict and (rep.missing or rep.unexpected or rep.mismatched):
        raise WeightsError(f"{rep.source} does not match {type(model).__name__}: {rep.summary()}. "
                           "Check --model, or pass --load-not-strict to load the matching part.")
    if not use:
        raise WeightsError(f"nothing in {rep.source} matches {type(model).__name__} ({rep.summary()}); "
                           "is it the weight file of another architecture?")
    model.load_state_dict(use, strict=False)
    if not _QUIET.get():
        log.info(rep.summary())
    return rep
