"""The package's layers import downward only, and no module imports itself in a circle.

Every import counts: at the top of a file, inside a function, inside a class (only ``if TYPE_CHECKING:``
blocks are left out, as they never run). The order is the README's code map. To check another tree (say an
older commit checked out elsewhere): ``DOGCAT_SRC=/path/to/src python -m pytest tests/test_layers.py``.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path

SRC = Path(os.environ.get("DOGCAT_SRC") or Path(__file__).parents[1] / "src")

# bottom first; a module may import from its own layer or any layer below, never above
LAYERS = [
    {"dogcat", "config", "metrics", "console"},  # the package root, the typed config and its tables, logging
    {"io", "locks", "preprocess", "control",     # safe files, locks, the preprocessing value, the ctl inbox,
     "hardware"},                                # what this CPU is
    {"data", "models"},                          # one file per data layout / per architecture
    {"tracking"},                                # run folders, manifest, TensorBoard, runs table, report pages
    {"engine"},                                  # training state and step, loops, evaluation, checkpoints
    {"exported", "inference"},                   # reading exported models; dogcat.load / predict
    {"export", "explanation", "sweep"},          # writing exported models; Grad-CAM pictures; Optuna sweeps
    {"cli", "demo", "__main__"},                 # the command line and the demo
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in (src / "dogcat").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules of dogcat it imports}``, wherever in the file the import statement is."""
    mods = modules(src)
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if base.split(".")[0] != "dogcat":
                    continue
                for alias in node.names:  # `from . import x` imports the module x
                    graph[mod].add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base)
            elif isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name.split(".")[0] == "dogcat"}
        graph[mod].discard(mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dogcat"


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(RANK), set(map(layer, modules())) - set(RANK)


def test_no_import_cycles_between_modules():
    assert cycles(imports()) == []


def test_layers_import_downward_only():
    upward = sorted(f"{a} -> {b}" for a, bs in imports().items() for b in bs
                    if RANK.get(layer(b), -1) > RANK.get(layer(a), -1))
    assert upward == [], "imports from a higher layer:\n" + "\n".join(upward)
