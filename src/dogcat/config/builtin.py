"""The built-in recipes: YAML files shipped inside the package (``dogcat/recipes/*.yaml``, package data), so that
a pip install has them: ``dogcat train --config=fashion-mnist``, ``dogcat recipes`` lists them, ``dogcat recipes
NAME`` prints one to copy and edit.

``--config=X`` names a file when ``X`` is an existing file (a path always wins); otherwise a bare name (no folder,
with or without ``.yaml``) names a built-in recipe. Read through :mod:`importlib.resources`, which finds them in
an installed wheel, an editable install or a zip alike. A recipe's one-line description is the first line of the
comment block at its top.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE = "dogcat"
FOLDER = "recipes"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _folder() -> Traversable:
    return files(PACKAGE).joinpath(FOLDER)


def names() -> list[str]:
    """The built-in recipes' names, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _folder().iterdir() if p.name.endswith(".yaml") and p.is_file())


def builtin(name: str) -> Traversable | None:
    """The built-in recipe ``name`` (``fashion-mnist`` or ``fashion-mnist.yaml``), or None if there is none."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if not NAME.fullmatch(stem) or stem not in names():
        return None
    return _folder().joinpath(f"{stem}.yaml")


def resolve(spec: str | Path) -> Path | Traversable:
    """What ``--config=spec`` reads: an existing file, else the built-in recipe of a bare name, else ``spec``
    itself (whose reading then fails, naming it)."""
    path = Path(spec)
    if path.is_file() or path.name != str(spec):  # a file, or something with a folder in it: a path
        return path
    return builtin(str(spec)) or path


def description(recipe: Traversable) -> str:
    """The first line of the comment block at the top of a recipe (blank if it starts with none)."""
    for line in recipe.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def listing() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in recipe."""
    return [(n, description(_folder().joinpath(f"{n}.yaml"))) for n in names()]
