"""Our JSON and JSON-lines files (manifest, sweep.json, metrics.jsonl, the precision probe's cache): bounded
reads that turn anything else into one :class:`~dogcat.io.MalformedFile` line, and writes every parser reads.

Split from ``io.py`` (files in general) because these rules are about the JSON inside, not the file: nesting and
size capped by :mod:`dogcat.reading`, a line cut short by a kill skipped, NaN written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .io import MalformedFile, one_line, read_small
from .reading import loads_json, open_regular


def read_json(path: Path | str, what: str, kind: type = dict, limit: int = 64 << 20) -> Any:
    """Parse one of our JSON files; anything else (unreadable, not JSON, not a ``kind``) is a
    :class:`MalformedFile` naming the file. A missing file raises FileNotFoundError."""
    try:
        data = loads_json(read_small(path, limit).decode("utf-8"))  # nesting and size capped
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise MalformedFile(f"{what} {path} is unreadable ({type(e).__name__}: {one_line(e)}); "
                            "it is damaged or not one of dogcat's files") from None
    if not isinstance(data, kind):
        raise MalformedFile(f"{what} {path} holds a JSON {type(data).__name__}, not a {kind.__name__}; "
                            "it is damaged or not one of dogcat's files")
    return data


JSONL_BYTES = 1 << 30  # metrics.jsonl: a million steps logged at ~300 bytes each fit many times over
JSONL_LINE = 1 << 20   # one record is a few hundred bytes; a longer line is no record of ours


def read_jsonl(path: Path | str, what: str, limit: int = JSONL_BYTES, line_limit: int = JSONL_LINE) -> list[dict]:
    """The JSON objects of a JSON-lines file we append to (``metrics.jsonl``), read line by line: a line cut
    short by a kill, one that is no JSON object, too long or nested too deep is skipped. A missing file is
    ``[]``; anything but a regular file of at most ``limit`` bytes (``/dev/zero``, a FIFO, a folder) is a
    :class:`MalformedFile` naming it, before a byte is read."""
    try:
        f = open_regular(path)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise MalformedFile(f"{what} {path} is unreadable: {one_line(e)}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise MalformedFile(f"{what} {path} is unreadable: {size:,} bytes, more than the {limit:,} allowed")
        out, total = [], 0
        while total <= limit:
            line = f.readline(line_limit + 1)
            if not line:
                break
            total += len(line)
            if len(line) > line_limit:
                while line and not line.endswith(b"\n"):  # the rest of an overlong line
                    line = f.readline(line_limit)
                    total += len(line)
                continue
            try:
                r = loads_json(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(r, dict):
                out.append(r)
    return out


def finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by None (``null``), recursively: what :func:`to_json` writes."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kw: Any) -> str:
    """JSON that every parser reads: Python's ``json.dumps`` writes ``NaN`` and ``Infinity``, which are not JSON;
    here they become ``null`` (a NaN model's probabilities, an undefined metric)."""
    return json.dumps(finite(obj), allow_nan=False, **kw)
