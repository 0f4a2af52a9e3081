"""Bounded reading of files from elsewhere: regular files only, a size cap before the first byte is read, and
JSON / YAML parsed with a cap on nesting and on the number of values.

Why not the plain calls: ``open(path).read()`` blocks forever on a FIFO and reads ``/dev/zero`` or a 4 GB
sparse file until memory runs out; ``json.loads`` of 20,000 nested brackets raises RecursionError (which no
``except ValueError`` catches); ``yaml.safe_load`` builds a 519-byte "billion laughs" file cheaply out of
shared references, but the first thing that walks or prints it (OmegaConf, an error message) expands it
to gigabytes. A pickle's memo (``torch.load``) shares references the same way. The standard library and PyYAML
have no switch for any of this, so: :func:`read_regular` refuses what is not a regular file of at most
``limit`` bytes; :func:`load_yaml` refuses nesting deeper than :data:`MAX_DEPTH` while composing (before any
recursion blows up); :func:`check_tree` walks a parsed value without recursion, counting every value as often
as it is reached (aliases and shared references expanded), and stops at :data:`MAX_DEPTH` levels or
:data:`MAX_NODES` values, whichever comes first: its cost is bounded by those caps, not by the expansion.

This module sits at the bottom (config/ reads recipes with it); errors are plain ``ValueError``s (and the
``OSError`` of an open that fails) that the callers turn into their one-line messages.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import yaml

MAX_DEPTH = 64         # nesting levels: our own files use at most 5; a checkpoint's optimizer state about 6
MAX_NODES = 1_000_000  # values, shared ones counted each time they are reached (a manifest holds a few thousand)


class TooComplex(ValueError):
    """Nested deeper than allowed, or more values than allowed (counting shared ones each time)."""


class NotRegular(ValueError):
    """A FIFO, a device, a folder or a socket where a file was expected."""


def open_regular(path: Path | str, follow: bool = True) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only: opened without blocking (a FIFO must not hang us), then
    ``fstat`` must say a regular file, else :class:`NotRegular` (the descriptor is closed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(f"not a regular file ({file_kind(mode)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, limit: int, follow: bool = True) -> bytes:
    """The bytes of the regular file ``path``, of at most ``limit`` bytes. The file is opened without blocking
    (a FIFO planted where a file should be must not hang us) and checked with ``fstat`` before a byte is read:
    a FIFO, a device (``/dev/zero``), a folder or a larger file is a ValueError saying which; ``follow=False``
    also refuses a final symlink (OSError ELOOP). A missing file raises FileNotFoundError."""
    with open_regular(path, follow) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"too large: {size:,} bytes, more than the {limit:,} allowed")
        data = f.read(size + 1)  # not read(limit + 1): CPython allocates that much up front, for every file
        if len(data) > size:  # it grows while we read it: the rest, up to the cap
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:  # grew while we read it
        raise ValueError(f"too large: more than the {limit:,} bytes allowed")
    return data


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for the messages)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def check_tree(obj: Any, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Raise :class:`TooComplex` when the dicts, lists and tuples of ``obj`` nest deeper than ``max_depth`` or
    hold more than ``max_nodes`` values in all, a value shared by several parents counted once per parent (as
    a walk or a dump would meet it). Iterative, so no depth of nesting can overflow the stack; a cycle is
    caught by the depth limit. Anything else (numbers, strings, tensors) is a leaf."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise TooComplex(f"more than {max_nodes:,} values (counting shared references or YAML aliases each "
                             "time they are used)")
        if isinstance(value, dict):
            children: Any = value.values()
            nodes += len(value)  # the keys
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth >= max_depth and len(children):
            raise TooComplex(f"nested more than {max_depth} levels deep")
        stack.extend((c, depth + 1) for c in children)


def loads_json(data: bytes | str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """``json.loads`` with :func:`check_tree`'s caps; a nesting deep enough to exhaust the recursion of the
    parser itself is the same :class:`TooComplex` (not a RecursionError). Other faults: ValueError."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise TooComplex(f"nested more than {max_depth} levels deep") from None
    check_tree(obj, max_depth, max_nodes)
    return obj


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that counts nesting while it composes, so that ``[[[[...]]]]`` stops at
    ``max_depth`` instead of recursing until Python gives up."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise TooComplex(f"nested more than {self.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: bytes | str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load`` with the caps of :func:`check_tree` (aliases expanded when counting). Raises
    :class:`TooComplex`, or ``yaml.YAMLError`` for text that is not YAML."""
    loader = type("Loader", (_BoundedLoader,), {"max_depth": max_depth})(text)
    try:
        obj = loader.get_single_data()
    except RecursionError:  # constructing a deep value that composing let through (it cannot, but be sure)
        raise TooComplex(f"nested more than {max_depth} levels deep") from None
    finally:
        loader.dispose()
    check_tree(obj, max_depth, max_nodes)
    return obj
