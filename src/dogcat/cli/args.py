"""Argument parsing of the ``dogcat`` command: argparse parsers generated from the typed config.

Each command declares its positional arguments, the config options it reads and a few options of its own;
the parser is built from that and from each option's type, default, choices and doc in ``config/options.py``, so no
option is listed twice. Before argparse sees them, option tokens are put into one spelling: dashes and
underscores are equal, case is ignored, ``--optim.lr`` is ``--lr``, ``--key value`` is ``--key=value``,
``--flag=false`` is ``--no-flag``, and an option's alias is its name (``--env`` is ``--name``, for the commands
that read it: ``dogcat sweep --name`` is the sweep's own). Config values stay strings here; ``load_config`` converts them by
each option's type and names the option when it cannot. Errors raise :class:`~dogcat.config.ConfigError`
(one line, exit 2) instead of argparse's usage-and-exit.
"""

from __future__ import annotations

import argparse
import difflib
import math
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Iterable

from ..config import ALIASES, OPTIONS, SECTIONS, ConfigError, flag, is_flag, spellings

ALL = frozenset(OPTIONS)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class Own:
    """An option of one command that is not a config option (``export --format``, ``runs --json``)."""

    name: str
    help: str
    type: Callable[[str], Any] | None = str  # None: a flag
    default: Any = None
    choices: tuple[str, ...] | None = None
    short: str | None = None        # a one-letter spelling: "c" for -c FILE, -cFILE, -c=FILE
    aliases: tuple[str, ...] = ()   # other long spellings (--fast-dev-run for --dry-run)
    const: Any = None               # not None: the value is optional, --name alone means const (--name=V: V)
    append: bool = False            # may be given several times: the values as a list, in order
    metavar: str | None = None      # the value's name in --help (default: the option's name in capitals)

    def spellings(self) -> list[str]:
        return [f"--{self.name}", *(f"--{a}" for a in self.aliases)] + ([f"-{self.short}"] if self.short else [])


@dataclass
class Command:
    """One ``dogcat`` command: what it takes and the function that runs it (``run(args, overrides)``)."""

    name: str
    summary: str
    run: Callable[[argparse.Namespace, dict[str, Any]], int]
    positionals: list[tuple[str, str | int | None, str]] = field(default_factory=list)  # (name, nargs, help)
    options: frozenset[str] = frozenset()  # the config options it reads
    own: list[Own] = field(default_factory=list)
    epilog: str = ""

    def option(self, name: str) -> str | None:
        """The config option a dashed spelling names, when this command reads it (``name`` -> ``env``)."""
        leaf = name.replace("-", "_")
        leaf = ALIASES.get(leaf, leaf)
        return leaf if leaf in self.options else None

    def own_option(self, name: str) -> Own | None:
        """The command's own option a dashed long spelling (or an alias of it) names."""
        return next((o for o in self.own if name == o.name or name in o.aliases), None)

    def takes_value(self, name: str) -> bool:
        """True for an option that needs a value (not a flag); ``name`` in dashed spelling."""
        leaf = self.option(name)
        if leaf is not None:
            return not is_flag(leaf)
        own = self.own_option(name)
        return own is not None and own.type is not None and own.const is None

    def is_flag(self, name: str) -> bool:
        leaf = self.option(name)
        if leaf is not None:
            return is_flag(leaf)
        own = self.own_option(name)
        return own is not None and own.type is None


def finite(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` for a command's own numbers: ``cast``, and finite (no nan / inf)."""
    def convert(raw: str) -> Any:
        value = cast(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value

    convert.__name__ = f"finite {cast.__name__}"  # argparse names the type in its message
    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (`{self.prog} --help` lists what it takes)")


def canonical(name: str) -> str:
    """An option name in the parser's spelling: lower case, dashes, no ``section.`` prefix."""
    key = name.strip().lower().replace("_", "-")
    sec, dot, leaf = key.partition(".")
    if dot and sec in SECTIONS:
        raw = leaf.replace("-", "_")
        if OPTIONS.get(ALIASES.get(raw, raw), ("",))[0] == sec:
            return leaf
    return key


def _suggest(name: str, cmd: Command) -> str:
    known = [s[2:] for o in cmd.options for s in spellings(o)] + [o.name for o in cmd.own] + ["quiet", "verbose"]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join('--' + c for c in close)}?"
    def is_option(n: str) -> bool:
        return n.replace("-", "_") in OPTIONS or n.replace("-", "_") in ALIASES

    if is_option(name) or name.startswith("no-") and is_option(name[3:]):
        return f": `dogcat {cmd.name}` does not read this config option"
    return ""


def normalize(argv: list[str], cmd: Command) -> list[str]:
    """Tokens in one spelling for argparse (see the module docstring); an unknown option raises, naming it."""
    out: list[str] = []
    shorts = {f"-{o.short}": o for o in cmd.own if o.short}
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out += argv[i - 1:]
            break
        if tok[:2] in shorts and not tok.startswith("--"):  # -c FILE, -cFILE, -c=FILE: --config=FILE
            value = tok[2:].removeprefix("=")
            if not value:
                if i >= len(argv):
                    raise ConfigError(f"option {tok} needs a value: {tok} VALUE")
                value, i = argv[i], i + 1
            out.append(f"--{shorts[tok[:2]].name}={value}")
            continue
        if not tok.startswith("--") or tok in ("--help",):
            out.append(tok)
            continue
        raw, eq, value = tok[2:].partition("=")
        name = canonical(raw)
        own = cmd.own_option(name)
        name = own.name if own is not None else name  # an alias: the option's own spelling
        negated = name.startswith("no-") and cmd.is_flag(name[3:])
        if name in ("quiet", "verbose", "version"):
            out.append(f"--{name}")
        elif own is not None and own.const is not None:  # an optional value: only in the --name=VALUE form
            out.append(f"--{name}" + (f"={value}" if eq else ""))
        elif cmd.is_flag(name) or negated:
            if eq:
                low = value.strip().lower()
                if low not in TRUE + FALSE:
                    raise ConfigError(f"option --{name} is a switch: give --{name} or --no-{name.removeprefix('no-')}"
                                      f" (or ={'|'.join(TRUE[:2] + FALSE[:2])}), got {value!r}")
                negated ^= low in FALSE
            base = name[3:] if name.startswith("no-") and cmd.is_flag(name[3:]) else name
            out.append(f"--no-{base}" if negated else f"--{base}")
        elif cmd.takes_value(name):
            if not eq:
                if i >= len(argv):
                    raise ConfigError(f"option --{name} needs a value: --{name}=VALUE or --{name} VALUE")
                value, i = argv[i], i + 1
            out.append(f"--{name}={value}")
        else:
            raise ConfigError(f"unknown option --{raw}{_suggest(name, cmd)} (`dogcat {cmd.name} --help` lists "
                              "its options)")
    return out


def _metavar(leaf: str) -> str:
    choices = OPTIONS[leaf][1].metadata.get("choices")
    if choices and len("|".join(choices)) <= 40:
        return "|".join(choices)
    t = str(OPTIONS[leaf][1].type).replace("Optional[", "").rstrip("]")
    return {"int": "N", "float": "X", "str": "TEXT"}.get(t, "A,B,...")


def option_help(leaf: str) -> str:
    """One option's help line: doc, allowed values and default."""
    f = OPTIONS[leaf][1]
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    text = f.metadata["doc"]
    if f.metadata.get("choices") and len("|".join(f.metadata["choices"])) > 40:
        text += f" [{'|'.join(f.metadata['choices'])}]"
    if f.metadata.get("range") is not None:
        text += f" {f.metadata['range']}"
    return f"{text} (default: {default})".replace("%", "%%")


def build_parser(cmd: Command) -> argparse.ArgumentParser:
    """The parser of one command: its positionals, its own options, then its config options by section."""
    synopsis = {"?": "[{}]", "+": "{}...", "*": "[{}...]"}
    usage = " ".join([f"dogcat {cmd.name}", *(synopsis.get(str(n), "{}").format(name.upper())
                                                for name, n, _ in cmd.positionals)])
    usage += " [--option=value ...]" if cmd.options or cmd.own else ""
    p = _Parser(prog=f"dogcat {cmd.name}", usage=usage, description=cmd.summary, epilog=cmd.epilog or None,
                allow_abbrev=False,
                formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32))
    for name, nargs, text in cmd.positionals:
        p.add_argument(name, nargs=nargs, help=text)  # type: ignore[arg-type]
    own = p.add_argument_group(f"{cmd.name} options")
    for o in cmd.own:
        names = ([f"-{o.short}"] if o.short else []) + [f"--{o.name}", *(f"--{a}" for a in o.aliases)]
        if o.type is None:
            own.add_argument(*names, action="store_true", default=o.default or False, help=o.help)
        else:
            extra: dict[str, Any] = {"nargs": "?", "const": o.const} if o.const is not None else {}
            own.add_argument(*names, type=o.type, default=o.default, choices=o.choices, help=o.help,
                             action="append" if o.append else "store", **extra,
                             metavar=o.metavar or o.name.upper().replace("-", "_") if not o.choices else None)
    own.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    own.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    for sec in SECTIONS:
        leaves = [leaf for leaf, (s, _) in OPTIONS.items() if s == sec and leaf in cmd.options]
        if not leaves:
            continue
        group = p.add_argument_group(f"{sec} options")
        for leaf in leaves:
            if is_flag(leaf):
                group.add_argument(*spellings(leaf), dest=leaf, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=option_help(leaf))
            else:
                group.add_argument(*spellings(leaf), dest=leaf, default=argparse.SUPPRESS, metavar=_metavar(leaf),
                                   help=option_help(leaf))
    return p


def parse(cmd: Command, argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """``(namespace of positionals and own options, {config option: raw value or bool})``."""
    parser = build_parser(cmd)
    ns, extra = parser.parse_known_intermixed_args(normalize(argv, cmd))
    if extra:
        opts = [e for e in extra if e.startswith("-")]
        if opts:
            raise ConfigError(f"unknown option {opts[0]}{_suggest(canonical(opts[0].lstrip('-')), cmd)} "
                              f"(`dogcat {cmd.name} --help` lists its options)")
        raise ConfigError(f"unexpected argument{'s' * (len(extra) > 1)} {' '.join(map(repr, extra))}; usage: "
                          f"{parser.format_usage().strip().removeprefix('usage: ')}")
    overrides = {k: v for k, v in vars(ns).items() if k in cmd.options}
    for k in overrides:
        delattr(ns, k)
    return ns, overrides


def to_argv(overrides: dict[str, Any]) -> list[str]:
    """Overrides back to canonical tokens (for the ``--nproc`` relaunch under torchrun). Valued options are
    spelled dotted (``--train.monitor=…``): torchrun's own parser takes a prefix of one of its options as that
    option even after the script's name (``--monitor`` would be its ``--monitor-interval``)."""
    out = []
    for k, v in overrides.items():
        name = flag(k)[2:]
        dotted = f"{OPTIONS[k][0]}.{name}" if k in OPTIONS else name
        out.append((f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{dotted}={v}")
    return out


def names(cmd: Command) -> Iterable[str]:
    """Every option spelling the command accepts (for shell completion)."""
    for leaf in sorted(cmd.options):
        for spelling in spellings(leaf):
            yield spelling
            if is_flag(leaf):
                yield f"--no-{spelling[2:]}"
    for o in cmd.own:
        yield from o.spellings()
    yield from ("--quiet", "--verbose", "--help")
