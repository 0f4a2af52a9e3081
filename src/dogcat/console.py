"""What dogcat shows people: its log records (the ``dogcat`` logger) and where they go.

The library logs through ``logging.getLogger("dogcat")`` and never configures logging itself. So that a
notebook or a plain script still shows the epoch summaries, importing dogcat gives that logger a default
handler (as Lightning and Hugging Face do), which writes to ``sys.stderr`` only while the application has
configured no logging of its own (the root logger has no handlers); once it has, dogcat's records reach it
through the usual propagation and the default handler stays quiet. Silence dogcat with
``logging.getLogger("dogcat").setLevel(logging.WARNING)``. The ``dogcat`` command calls
:func:`use_for_cli`: records always go to stderr, results alone to stdout.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from typing import Any

LOGGER = "dogcat"

# Credentials inside URIs: the password of ``scheme://user:password@host`` and the value of a query parameter
# whose name says it is one (``?token=...``, ``&password=...``, ``access_key=...``)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):([^/\s@]+)@")
_QUERY = re.compile(r"([?&;][^=&;#\s]*(?:token|password|passwd|pwd|secret|key|signature|sig|credential|auth)"
                    r"[^=&;#\s]*=)[^&;#\s]+", re.IGNORECASE)
MASK = "***"


def redact(text: Any) -> str:
    """``text`` with the credentials of every URI in it masked (``http://user:***@host``, ``?token=***``): what
    dogcat stores (config.yaml, manifest.json, checkpoints, trackers) or prints. The one masking rule: a secret
    given on the command line (``--mlflow-uri``, a sweep's ``--storage``) is used, never written or shown."""
    text = str(text)
    if "://" not in text and "=" not in text:
        return text
    return _QUERY.sub(rf"\1{MASK}", _USERINFO.sub(rf"\1:{MASK}@", text))


# C0 controls, DEL and C1 controls, as Python writes them in a string literal: ESC (which retitles and clears a
# terminal), CR (which overwrites a line), CSI (\x9b, ESC [ in one character)... The layout's \n and \t are kept
# in whole texts (tables, multi-line messages) but escaped in names (:func:`escape`).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
_LAYOUT = {c: e for c, e in _CONTROLS.items() if c not in (ord("\n"), ord("\t"))}


def _unicode(text: Any) -> str:
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(text: Any) -> str:
    """``text`` for people (the terminal, logs, figures, HTML, TensorBoard): control characters other than the
    layout's newlines and tabs are shown escaped (``\\x1b``, ``\\r``, ``\\x9b``), so a name cannot move the
    cursor, clear the screen or overwrite a line; the bytes of a file name that is not UTF-8 (held as lone
    surrogates) are shown as ``\\xNN``. Names put into a text go through :func:`escape` first."""
    return _unicode(text).translate(_LAYOUT)


def escape(name: Any, keep_bytes: bool = False) -> str:
    """A name (a file, a class, a run folder) as one line: every control character escaped, newlines and tabs
    too (``\\n``, ``\\t``), so it cannot forge a log line, a table row or a line of a line-based file.
    ``keep_bytes``: for a file we write with ``surrogateescape`` (``bad_files.txt``): the bytes of a name that
    is not UTF-8 stay those bytes; only control characters are escaped."""
    return (str(name) if keep_bytes else _unicode(name)).translate(_CONTROLS)


def figure_text(text: Any) -> str:
    """:func:`printable` for matplotlib: ``$`` escaped as ``\\$``, so a name holding two dollars is shown as it
    is, not parsed as math text (which fails on most names and took the figure down with it)."""
    return printable(text).replace("$", r"\$")


class StderrHandler(logging.Handler):
    """Writes each record as one line to the ``sys.stderr`` of the moment (a notebook's, a test's capture).

    ``only_unconfigured``: emit only while the root logger has no handlers (the library default)."""

    def __init__(self, only_unconfigured: bool = True) -> None:
        super().__init__()
        self.only_unconfigured = only_unconfigured
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.only_unconfigured and logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(redact(printable(self.format(record))) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001  # logging's own rule: a failing handler must not raise
            self.handleError(record)


def _handler() -> StderrHandler:
    logger = logging.getLogger(LOGGER)
    for h in logger.handlers:
        if isinstance(h, StderrHandler):
            return h
    h = StderrHandler()
    logger.addHandler(h)
    return h


def install_default() -> None:
    """The library default: INFO records shown on stderr while the application configured no logging."""
    _handler()
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def use_for_cli(level: int) -> None:
    """The command line: every record at ``level`` or above on stderr."""
    _handler().only_unconfigured = False
    logging.getLogger(LOGGER).setLevel(level)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal, yet a widget or HTML can be shown)."""
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return type(ip).__name__ == "ZMQInteractiveShell"


def progress_bar() -> type:
    """The tqdm class for progress bars: tqdm.notebook's widget in a Jupyter kernel that has ipywidgets, else
    tqdm's text bar. Written out because ``tqdm.auto`` warns (``TqdmWarning: IProgress not found``) at import in
    every kernel without ipywidgets, which dogcat does not require."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm
