"""From recipes and ``--key=value`` to a checked :class:`~dogcat.config.options.Config`, and back to YAML.

Layers, later wins: the dataclass defaults -> each YAML recipe in the order given (``--config=A --config=B``,
``-c A -c B``) -> ``--key=value`` overrides (the command line puts ``DOGCAT_*`` variables, ``environ.py``, just
below its own options). Keys are accepted flat (``--lr``, the fire style of the original pytorch-book project) or dotted
(``--optim.lr``); dashes and underscores are equal, and an option's alias (``--env`` for ``--name``) is its name. OmegaConf does the merging and type checking; this module only
turns its errors into messages that name the key, the expected type and the value, or the choices.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
import warnings
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..console import redact
from ..reading import TooComplex, check_tree, load_yaml, read_regular
from . import builtin
from .options import ALIASES, LOGGERS, OPTIONS, SECTIONS, Config, ConfigError, Range, flag
from .values import freeze_of, parse_class_weights


def _norm(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_").lower()


def resolve_key(key: str) -> str:
    """Return the dotted path of a flat or dotted option name, or raise naming the closest names."""
    k = _norm(key)
    raw = k.split(".")[-1]
    leaf = ALIASES.get(raw, raw)
    if leaf in OPTIONS and k in (raw, f"{OPTIONS[leaf][0]}.{raw}"):
        return f"{OPTIONS[leaf][0]}.{leaf}"
    names = [*OPTIONS, *ALIASES] + [f"{s}.{n}" for n, (s, _) in OPTIONS.items()]
    close = difflib.get_close_matches(k, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(flag(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown option --{key.lstrip('-')}{hint} (`dogcat help` lists all options)")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a YAML mapping that may be nested by section or flat."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        nk = _norm(str(k))
        if nk in SECTIONS and isinstance(v, dict) and not prefix:
            out.update(_flatten(v, nk + "."))
        else:
            out[prefix + nk] = v
    return out


def _coerce(path: str, value: Any) -> Any:
    """Turn the string spellings of the command line (and of YAML strings) into values: None for options that
    can be None, lists from ``a,b`` or ``[a,b]``. Numbers and booleans stay strings here: OmegaConf converts
    ``"0.1"`` for a float option and ``"false"`` for a bool one, and names the option when it cannot."""
    sec, leaf = path.split(".")
    f = OPTIONS[leaf][1]
    optional = str(f.type).startswith("Optional")
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None  # only for options that can be None: --augment=none and --scheduler=none are choices
    if isinstance(value, str) and str(f.type).replace("Optional[", "").startswith("list"):
        return [yaml.safe_load(v) for v in value.strip().strip("[]").split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and str(f.type) == "str":  # YAML's [1, 3] for a "1,3" option
        return ",".join(str(v) for v in value)
    return value


def _type_name(f: Any) -> str:
    t = str(f.type)
    return f"{t[len('Optional['):-1]} or None" if t.startswith("Optional[") else t  # keeps list[float]'s "]"


def _apply(cfg: DictConfig, items: dict[str, Any], source: str) -> None:
    for key, value in items.items():
        try:
            path = resolve_key(key)
        except ConfigError as e:
            raise ConfigError(f"{e} [{source}]") from None
        f = OPTIONS[path.split(".")[1]][1]
        if not _shape_fits(f, value):  # before anything converts (or prints) a structure given for a scalar
            raise ConfigError(f"option {flag(f.name)} ({source}) expects {_type_name(f)}, got a "
                              f"{type(value).__name__}: {reprlib.repr(value)}")
        value = _coerce(path, value)
        try:
            OmegaConf.update(cfg, path, value, merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(
                f"option {flag(path.split('.')[1])} ({source}) expects {_type_name(f)}, "
                f"got {reprlib.repr(value)}") from e


def _shape_fits(f: Any, value: Any) -> bool:
    """A scalar for a scalar option; a list of scalars for a list option, or for a text one (YAML's ``[1, 3]`` for
    ``"1,3"``); a mapping never."""
    if isinstance(value, dict):
        return False
    if isinstance(value, (list, tuple)):
        return ("list" in str(f.type) or str(f.type) == "str") and not any(isinstance(v, (dict, list, tuple))
                                                                           for v in value)
    return True


def _check_choices(cfg: DictConfig) -> None:
    for leaf, (sec, f) in OPTIONS.items():
        choices = f.metadata.get("choices")
        value = cfg[sec][leaf]
        if choices and value is not None:
            low = str(value).lower()
            if low not in choices:
                raise ConfigError(f"option {flag(leaf)}={value!r} is not one of: {', '.join(choices)}")
            cfg[sec][leaf] = low


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def _check_ranges(cfg: DictConfig) -> None:
    """Every numeric option against the ``range`` in its metadata (list options: each element); floats must
    be finite. YAML, the command line, ``dogcat ctl set`` and a resume all pass through here."""
    for leaf, (sec, f) in OPTIONS.items():
        allowed: Range | None = f.metadata.get("range")
        value = cfg[sec][leaf]
        if allowed is None or value is None:
            continue
        is_list, is_float = OmegaConf.is_list(value), "float" in str(f.type)
        for v in (list(value) if is_list else [value]):
            if (is_float and not math.isfinite(v)) or v not in allowed:
                shown = list(value) if is_list else value
                raise ConfigError(f"option {flag(leaf)}={shown} is out of range: allowed is "
                                  f"{'a finite number' if is_float else 'an integer'} in {allowed}"
                                  + (" (each element)" if is_list else ""))


def _check_values(cfg: DictConfig) -> None:
    """Checks that need more than a type: ranges, names. (The optimizer's name is checked against torch.optim
    by ``engine.optim.check_optimizer`` before a run starts: this module does not load torch.)"""
    _check_ranges(cfg)
    env = cfg.train.env
    if not RUN_NAME.fullmatch(env):
        raise ConfigError(f"option {flag('env')}={env!r} is not a plain run name: allowed are letters, digits, '.', '_', "
                          "'-' and '+', starting with a letter or digit, at most 100 characters (it names a folder "
                          "inside --runs-root; pass --run-dir=PATH for a folder elsewhere)")
    cfg.train.logger = logger_list(cfg.train.logger)
    parse_class_weights(cfg.optim.class_weights)  # raises naming the option; users parse it the same way
    _check_finetune(cfg)
    clip = cfg.eval.clip_probs
    if clip is not None and not (len(clip) == 2 and 0.0 <= clip[0] < clip[1] <= 1.0):
        raise ConfigError(f"option --clip-probs expects two numbers a,b with 0 <= a < b <= 1 (e.g. 0.02,0.98), "
                          f"got {list(clip)}")


def _check_finetune(cfg: DictConfig) -> None:
    """``--freeze`` / ``--unfreeze-at`` / ``--cache-features`` together: each combination that cannot work is one
    line naming the options. Features computed once need a frozen backbone for the whole run and the same
    input every epoch, so no random augmentation and no mixing of images (they are refused, not ignored: the
    run would silently train on something else than asked)."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    frozen = freeze_of(m)
    if m.freeze_backbone and str(m.freeze).lower() not in ("none", "backbone"):
        raise ConfigError(f"options --freeze-backbone and --freeze={m.freeze} disagree: pass one of them")
    if m.unfreeze_at and frozen == "none":
        raise ConfigError(f"option --unfreeze-at={m.unfreeze_at} needs --freeze=backbone or --freeze=N (nothing is "
                          "frozen to unfreeze)")
    if not m.cache_features:
        return
    why = [f"--freeze={frozen} (needs --freeze=backbone)"] if frozen != "backbone" else []
    why += [f"--unfreeze-at={m.unfreeze_at} (the backbone must stay frozen)"] if m.unfreeze_at else []
    why += [f"--augment={d.augment} (needs --augment=none: features are computed once)"] if d.augment != "none" else []
    why += [f"--random-erasing={d.random_erasing}"] if d.random_erasing else []
    why += [f"--{k}={o[k]}" for k in ("mixup", "cutmix") if o[k]]
    if why:
        raise ConfigError("option --cache-features trains the head on features computed once per image, which does "
                          "not fit " + ", ".join(why))


def logger_list(spec: str) -> str:
    """``--logger`` normalised: lower case, no blanks or repeats, in the order given; ``none`` (or empty) alone
    means no tracker. A name outside :data:`LOGGERS` is one ConfigError line."""
    names = list(dict.fromkeys(n.strip().lower() for n in str(spec).split(",") if n.strip()))
    if names in ([], ["none"]):
        return "none"
    if "none" in names:
        raise ConfigError(f"option --logger={spec!r}: none means no tracker and goes alone")
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ConfigError(f"option --logger={spec!r}: unknown tracker {', '.join(map(repr, bad))}; a comma list of "
                          f"{', '.join(LOGGERS)}, or none")
    return ",".join(names)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--lr=0.1', '--use-gpu']`` -> ``{'lr': '0.1', 'use_gpu': True}``: values stay strings, which
    :func:`load_config` converts by each option's type (``--env=2024`` stays the name "2024")."""
    out: dict[str, Any] = {}
    for a in args:
        if not a.startswith("--"):
            raise ConfigError(f"expected --key=value, got {a!r}")
        key, eq, raw = a[2:].partition("=")
        out[key] = raw if eq else True  # a bare flag switches a boolean on, as fire does
    return out


def _drop_local(tree: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """``tree`` without the ``local`` options (places dogcat writes to or watches): a recipe file or a checkpoint
    is data from elsewhere and does not choose them. With ``warn``, one warning per value set that is not the
    default (a run's own config.yaml, read again on resume, holds them all)."""
    out = {}
    for key, value in tree.items():
        f = OPTIONS.get(str(key).split(".")[-1], (None, None))[1]
        if f is None or not f.metadata.get("local"):
            out[key] = value
        elif warn and value is not None and value != f.default:
            name = flag(f.name)
            warnings.warn(f"{source}: {name}={value!r} ignored: a recipe does not choose where dogcat writes; "
                          f"pass {name} on the command line")
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe: a file, or a built-in recipe by name (``config/builtin.py``); a missing,
    unreadable or non-mapping file is one ConfigError line."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"--config expects a YAML file name, got {path!r}")
    path = builtin.resolve(path)  # a file, or a built-in recipe's name
    if not path.exists():
        raise ConfigError(f"--config: no such file {str(path)!r}, nor a built-in recipe of that name (built in: "
                          f"{', '.join(builtin.names())}; `dogcat recipes` describes them)")
    try:  # a regular file of at most 16 MiB; nesting and aliases capped (dogcat.reading)
        tree = load_yaml(read_regular(path, 16 << 20).decode("utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--config: {path} is not a readable YAML file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"--config: {path} is not a YAML mapping (it holds a {type(tree).__name__})")
    return tree


Recipes = Union[str, Path, Sequence[Union[str, Path]], None]


def recipe_list(config_file: Recipes) -> list[str | Path]:
    """``--config`` as a list of files (or built-in recipe names), in the order given: one, several or none. A
    comma is not a separator: file names may hold one; give ``--config`` once per file."""
    if config_file is None:
        return []
    return [config_file] if isinstance(config_file, (str, Path)) else list(config_file)


def load_config(overrides: dict[str, Any] | None = None, config_file: Recipes = None,
                base: Config | dict | None = None, source: str = "on the command line",
                recipe: dict[str, Any] | None = None, run_config: bool = False) -> Config:
    """Build the resolved config: defaults (or ``base``) -> each YAML file in order -> overrides, validated.
    ``config_file``: a file, a built-in recipe's name, or a list of them (a later file's value wins; each file's
    ``local`` options, the places written to, are ignored with a warning). ``run_config``: the one file is the
    resumed run's own config.yaml, whose places are the run's and kept (the caller knows; nothing in a file's
    contents can claim it). ``source`` names where the overrides came from, for the messages. ``recipe``: the
    mapping of a single ``config_file`` when the caller has read it already (a sweep's space file, less its
    ``search`` block)."""
    cfg = OmegaConf.structured(Config)
    if base is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.structured(base) if is_dataclass(base) else base)
    files = recipe_list(config_file)
    if (recipe is not None or run_config) and len(files) != 1:
        raise ValueError("load_config(recipe=... or run_config=True) goes with exactly one config_file")
    for path in files:
        flat = _flatten(read_recipe(path) if recipe is None else recipe)
        _apply(cfg, flat if run_config else _drop_local(flat, f"{path}", warn=True), f"in {path}")
    _apply(cfg, overrides or {}, source)
    _check_choices(cfg)
    _check_values(cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj


def as_config(cfg: Config | str | Path | list | tuple | dict | None = None, overrides: dict[str, Any] | None = None,
              run_config: bool = False) -> Config:
    """What the library functions accept as a config: a :class:`Config`, a YAML recipe's path (or a list of
    them, merged in order), a dict of options, or None (the defaults), each with keyword ``overrides`` on top;
    always validated. ``run_config``: ``cfg`` is a resumed run's own config.yaml (see :func:`load_config`)."""
    if isinstance(cfg, (str, Path, list, tuple)):  # one recipe, or several merged in order
        return load_config(overrides, config_file=cfg, run_config=run_config)
    if isinstance(cfg, dict):
        return load_config({**cfg, **(overrides or {})})
    return load_config(overrides, base=cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (JSON/YAML safe), as every copy of it is stored (config.yaml, checkpoints,
    trackers): credentials in URIs masked (console.redact). Nothing reads a secret back from a stored config: the
    options that can hold one are places (``local``), which come from the command line only."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return {sec: {k: redact(v) if isinstance(v, str) else v for k, v in opts.items()} if isinstance(opts, dict)
            else opts for sec, opts in out.items()}


def from_dict(tree: Any, source: str = "a stored config") -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. stored in a checkpoint). Unknown keys and bad values
    fail naming ``source``; ``local`` options (output places) are not taken from it."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the stored config is a {type(tree).__name__}, not a mapping")
    try:  # before anything walks it: shared references (a pickle's memo) may expand hugely
        check_tree(tree)
    except TooComplex as e:
        raise ConfigError(f"{source} is not a config: {e}") from None
    try:
        return load_config(base=None, overrides=_drop_local(_flatten(tree), source, warn=False), source=f"in {source}")
    except ConfigError as e:
        raise ConfigError(str(e) if source in str(e) else f"{e} (in {source})") from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (a run's config.yaml; io.write_config writes it atomically)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def help_text() -> str:
    """Every option, grouped by section, with default, choices and doc."""
    lines = []
    for sec in fields(Config):
        lines.append(f"\n{sec.name}:")
        for f in fields(sec.default_factory):  # type: ignore[arg-type]
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            choices = f.metadata.get("choices")
            allowed = f.metadata.get("range")
            doc = f.metadata["doc"] + (f" [{'|'.join(choices)}]" if choices else "") + (f" {allowed}" if allowed else "")
            lines.append(f"  {flag(f.name):<22} {str(default):<14} {doc}")
    return "\n".join(lines)
