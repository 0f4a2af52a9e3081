"""A sweep's search space: a recipe plus a ``search:`` block, checked whole before any trial runs.

``search:`` maps options to one of ``loguniform: [lo, hi]``, ``uniform: [lo, hi]``, ``int: [lo, hi]`` or
``choice: [a, b, ...]``. Every option is the config's own (flat or dotted name); each choice and both ends
of each range go through :func:`~dogcat.config.load_config` on top of the recipe, so a value the option
does not allow fails here, naming the key, exactly as ``dogcat train`` would name it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import LOCAL, OPTIONS, Config, ConfigError, DogcatError, flag, load_config, read_recipe, resolve_key

KINDS = ("loguniform", "uniform", "int", "choice")
PRUNERS = ("median", "hyperband", "none")  # what --pruner may name (study.make_pruner builds them)
# options the sweep sets for each trial; and those that cannot vary between trials (what is measured, where)
PER_TRIAL = {"run_dir", "resume", "env", "debug_file"}
NOT_SEARCHABLE = PER_TRIAL | {"runs_root", "monitor", "nproc", "progress"}


@dataclass(frozen=True)
class Param:
    """One searched option: its leaf name, the kind of distribution and its bounds or choices."""

    name: str
    kind: str
    values: tuple

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for it."""
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, *self.values, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, *self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, *self.values)
        return trial.suggest_categorical(self.name, list(self.values))

    def describe(self) -> str:
        return f"{self.name}: {self.kind} {list(self.values)}"


@dataclass
class Space:
    """The recipe of every trial (``recipe``, ``overrides`` from the command line) and what is searched."""

    path: Path
    recipe: dict[str, Any]
    overrides: dict[str, Any]
    params: list[Param]
    base: Config

    def config(self, values: dict[str, Any], **places: Any) -> Config:
        """One trial's config: recipe -> command-line overrides -> the drawn ``values`` -> ``places``."""
        return load_config({**self.overrides, **values, **places}, config_file=self.path, recipe=self.recipe,
                           source=f"in the search of {self.path}")


def _number(key: str, kind: str, v: Any, integer: bool) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise ConfigError(f"search: {key}: {kind} expects two {'integers' if integer else 'finite numbers'} "
                          f"[lo, hi], got {v!r}")
    return v


def parse_param(key: Any, spec: Any) -> Param:
    """``key: {kind: values}`` -> :class:`Param`; a malformed entry is one ConfigError naming the key."""
    leaf = resolve_key(str(key)).split(".")[1]  # an unknown option names itself and the closest names
    name = flag(leaf)
    if leaf in LOCAL - PER_TRIAL:  # a space file is data from elsewhere: like a recipe, it chooses no place
        raise ConfigError(f"search: {name} is a place on this machine (where dogcat writes or reads), which only "
                          "the command line chooses: it cannot be searched")
    if leaf in NOT_SEARCHABLE:
        raise ConfigError(f"search: {name} cannot be searched (the sweep sets it, or it would change what is "
                          "measured); set it in the recipe or on the command line")
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise ConfigError(f"search: {key}: expected one of {', '.join(k + ': [...]' for k in KINDS)}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"search: {key}: {kind} expects a list, got {values!r}")
    if kind == "choice":
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"search: {key}: choice lists a value twice: {values}")
        if any(not isinstance(v, (str, int, float, bool)) and v is not None for v in values):
            raise ConfigError(f"search: {key}: choices must be plain values (text, numbers, true/false), got {values}")
        return Param(leaf, kind, tuple(values))
    if len(values) != 2:
        raise ConfigError(f"search: {key}: {kind} expects [lo, hi], got {values!r}")
    lo, hi = (_number(str(key), kind, v, kind == "int") for v in values)
    if not lo < hi:
        raise ConfigError(f"search: {key}: {kind} [{lo}, {hi}] is empty: lo must be below hi")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"search: {key}: loguniform needs lo > 0 (a log scale), got [{lo}, {hi}]")
    opt_type = str(OPTIONS[leaf][1].type)
    if kind == "int" and "int" not in opt_type or kind != "int" and "float" not in opt_type:
        raise ConfigError(f"search: {key}: {name} is {opt_type}: use "
                          + ("int: [lo, hi] or choice" if "int" in opt_type else
                             "uniform / loguniform: [lo, hi] or choice" if "float" in opt_type else "choice"))
    return Param(leaf, kind, (lo, hi))


def read_space(path: str | Path, overrides: dict[str, Any] | None = None) -> Space:
    """Read and check a space file: the recipe, every search entry, and every choice and range end applied
    to the recipe with the config's own validation. Nothing is written."""
    path = Path(path)
    tree = read_recipe(path)
    search = tree.pop("search", None)
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{path}: no `search:` block (a mapping of option: {{kind: values}}); "
                          "`dogcat train --config` runs a plain recipe")
    overrides = dict(overrides or {})
    for key in overrides:
        if resolve_key(key).split(".")[1] in PER_TRIAL:
            raise ConfigError(f"{flag(resolve_key(key).split('.')[1])} is set by the sweep for each trial")
    params = [parse_param(k, v) for k, v in search.items()]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"search: an option is listed twice ({', '.join(names)})")
    given = {resolve_key(k).split(".")[1] for k in overrides}
    for p in params:
        if p.name in given:
            raise ConfigError(f"{flag(p.name)} is given on the command line and searched in {path}")
    space = Space(path, tree, overrides, params, load_config(overrides, config_file=path, recipe=tree))
    for p in params:
        for v in p.values:
            try:
                space.config({p.name: v})
            except ConfigError as e:
                raise ConfigError(f"search: {p.name}: {p.kind} value {v!r}: {e}") from None
    if space.base.train.nproc > 1:
        raise ConfigError("a sweep runs each trial in its own process: --nproc must be 1 (docs/sweeps.md: one "
                          "sweep process per GPU with CUDA_VISIBLE_DEVICES)")
    return space


def check_names(space: Space) -> None:
    """Names the config layer cannot check (registries above it): each model choice against the model
    registry and the input size, each optimizer against torch.optim. Loads torch."""
    from ..engine.optim import check_optimizer
    from ..models import check_input

    choices = {p.name: p.values for p in space.params if p.kind == "choice"}
    size = space.base.data.image_size
    for model in choices.get("model", (space.base.model.model,)):
        for sz in choices.get("image_size", (size,)):
            try:
                check_input(str(model), 3, int(sz))
            except DogcatError as e:
                raise ConfigError(f"search: model: {e}") from None
    for name in choices.get("optimizer", ()):
        try:
            check_optimizer(str(name))
        except ConfigError as e:
            raise ConfigError(f"search: optimizer: {e}") from None
