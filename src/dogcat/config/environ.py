"""Options from ``DOGCAT_*`` environment variables: a layer between the recipes and the command line.

Precedence, later wins: the defaults -> each ``--config`` in the order given -> ``DOGCAT_*`` variables -> the
command line. A variable acts like the option on the command line of every command that reads that option
(``DOGCAT_RUNS_ROOT`` for ``train``, ``runs``, ``sweep`` ...) and is ignored by the others; library calls
(``dogcat.train(...)``) read no variables, so a notebook or a script gets exactly the options it passes.

Spelling: ``DOGCAT_`` + the option's name in any case (``DOGCAT_LR``, ``DOGCAT_BATCH_SIZE``, ``DOGCAT_NAME`` or
its alias ``DOGCAT_ENV``), or with its section and a double underscore (``DOGCAT_OPTIM__LR``), as the dotted
``--optim.lr``. Values are spelled as on the command line (``DOGCAT_CACHE=1|0|true|false``,
``DOGCAT_MILESTONES=30,60``, ``DOGCAT_PRETRAINED=none``); an empty value counts as unset.

The user's own shell is trusted as the command line is: a variable may set ``local`` options too (the places
dogcat writes to, e.g. ``DOGCAT_RUNS_ROOT=/scratch/runs``), which recipes and checkpoints never set.

Not every ``DOGCAT_`` variable is an option: :data:`NOT_OPTIONS` are dogcat's own (read by its tests). Any other
name that is no option is a warning naming it (with the closest option's variable), not an error: a stray
variable in a shell must not stop every command, but a typo is seen. A bad value stops the command with one
line naming the variable, its value and what the option allows (exit 2), before anything starts.
"""

from __future__ import annotations

import difflib
import functools
import re
import warnings
from typing import Iterable, Mapping

from .loading import load_config
from .options import OPTIONS, ConfigError, flag, spellings

PREFIX = "DOGCAT_"
# DOGCAT_ variables that are not options: tests/test_layers.py (which source tree to check) and tests/test_fuzz.py
# (how many examples). tests/test_config_sources.py keeps this list equal to the variables the code reads.
NOT_OPTIONS = frozenset({"DOGCAT_SRC", "DOGCAT_FUZZ_EXAMPLES"})
BOOLS = ("1", "0", "true", "false", "yes", "no", "on", "off")  # a switch's values, as --flag=VALUE takes them


def variable(leaf: str) -> str:
    """The environment variable of an option, in its primary spelling: ``lr`` -> ``DOGCAT_LR``, ``env`` ->
    ``DOGCAT_NAME``."""
    return PREFIX + flag(leaf)[2:].replace("-", "_").upper()


@functools.cache
def _spellings() -> dict[str, str]:
    """Every accepted variable name (upper case) -> the option it sets."""
    out = {}
    for leaf, (sec, _) in OPTIONS.items():
        for s in spellings(leaf):
            name = s[2:].replace("-", "_").upper()
            out[PREFIX + name] = leaf
            out[f"{PREFIX}{sec.upper()}__{name}"] = leaf
    return out


def _option(name: str) -> str | None:
    """The option a variable names (any case after the prefix), or None."""
    return _spellings().get(PREFIX + name[len(PREFIX):].upper())


def read_environ(environ: Mapping[str, str], reads: Iterable[str], warn: bool = True) -> dict[str, tuple[str, str]]:
    """``{option: (variable, value)}`` of the ``DOGCAT_*`` variables in ``environ`` that name options in ``reads``
    (the options of one command), each value checked alone. Warns once per variable that is no option (with
    ``warn``); a bad value is one ConfigError naming the variable. Two spellings of one option (``DOGCAT_NAME``
    and ``DOGCAT_ENV``) are refused: which one won would be an accident."""
    reads = set(reads)
    out: dict[str, tuple[str, str]] = {}
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in NOT_OPTIONS:
            continue
        value = environ[name]
        leaf = _option(name)
        if leaf is None:
            if warn:
                warnings.warn(unknown_message(name))
            continue
        if leaf not in reads or value == "":
            continue
        if leaf in out:
            raise ConfigError(f"environment variables {out[leaf][0]} and {name} both set {flag(leaf)}: unset one")
        check_value(name, leaf, value)
        out[leaf] = (name, value)
    return out


def unknown_message(name: str) -> str:
    close = difflib.get_close_matches(PREFIX + name[len(PREFIX):].upper(), list(_spellings()), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (f"environment variable {name} is not a dogcat option{hint} (ignored; `dogcat help` lists the options, "
            f"each settable as {PREFIX}<OPTION>)")


def check_value(name: str, leaf: str, value: str) -> None:
    """Raise one ConfigError line naming the variable when ``value`` is not allowed for ``leaf``."""
    if str(OPTIONS[leaf][1].type) == "bool" and value.strip().lower() not in BOOLS:
        raise ConfigError(f"environment variable {name}={value!r}: option {flag(leaf)} is a switch: one of "
                          f"{', '.join(BOOLS)}")
    try:
        load_config({leaf: value}, source="in the environment")
    except ConfigError as e:
        raise ConfigError(f"environment variable {name}={value!r}: {e}") from None


def where_from(message: str, taken: Mapping[str, tuple[str, str]]) -> str:
    """``message`` (a refusal) with the variables it is about named: the engine refuses options (a resume that
    would change ``--batch-size``, a ``--monitor`` the data cannot give) without knowing that a variable set
    them. ``taken``: :func:`read_environ`'s answer, less the options the command line set itself."""
    named = [f"{var}={value!r}" for leaf, (var, value) in taken.items()
             if any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", message) for s in spellings(leaf))]
    return f"{message} (set in the environment: {', '.join(named)})" if named else message


__all__ = ["BOOLS", "NOT_OPTIONS", "PREFIX", "check_value", "read_environ", "unknown_message", "variable",
           "where_from"]
