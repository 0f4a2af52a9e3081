"""The package's layers import downward only, and no module imports itself in a circle; the option lists
(live, resumable, not part of the experiment) agree with each other and are derived in one place.

Every import counts: at the top of a file, inside a function, inside a class (only ``if TYPE_CHECKING:``
blocks are left out, as they never run). The order is docs/code-map.md's. To check another tree (say an
older commit checked out elsewhere): ``DOGCAT_SRC=/path/to/src python -m pytest tests/test_layers.py``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(os.environ.get("DOGCAT_SRC") or Path(__file__).parents[1] / "src")

# bottom first; a module may import from its own layer or any layer below, never above
LAYERS = [
    {"dogcat", "config", "metrics", "console",   # the package root, the typed config and its tables, logging,
     "reading"},                                 # bounded reads and parsing
    {"io", "jsonfiles", "locks", "processes",    # safe files and our JSON in them, locks, this job's process (Dist),
     "preprocess", "control", "hardware"},       # the preprocessing value, the ctl inbox, what this CPU is
    {"data", "models"},                          # one file per data layout / per architecture
    {"tracking"},                                # run folders, manifest, TensorBoard, runs table, report pages
    {"engine"},                                  # training state and step, loops, evaluation, checkpoints
    {"runners", "inference"},                    # reading exported models; dogcat.load / predict
    {"export", "explanation", "features", "sweep"},  # writing exported models; Grad-CAM pictures; embed; sweeps
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


# --- the option lists ---------------------------------------------------------------------------------------
OPTION_LISTS = ("LIVE", "RESUMABLE", "NOT_EXPERIMENT")
FACTS = """
import json
from dogcat.config import options as o
print(json.dumps({"facts": {leaf: {"section": sec, **{k: f.metadata.get(k) for k in ("changes", "experiment", "local")}}
                            for leaf, (sec, f) in o.OPTIONS.items()},
                  "changes": list(getattr(o, "CHANGES", ())),
                  "lists": {n: sorted(getattr(o, n)) for n in %r if hasattr(o, n)},
                  "live_order": list(getattr(o, "LIVE", ()))}))
""" % (OPTION_LISTS,)


def _option_facts() -> dict:
    """Each option's facts and the lists as the checked tree defines them (in a child process, so that
    DOGCAT_SRC's tree is the one imported)."""
    out = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    return json.loads(out.stdout)


def test_option_lists_agree_with_each_option_s_facts():
    """A live option is resumable; a local one (a place) is resumable and not part of the experiment; each list
    is exactly the options whose facts say so."""
    got = _option_facts()
    facts, lists = got["facts"], got["lists"]
    assert set(lists) == set(OPTION_LISTS), f"config/options.py must define {OPTION_LISTS}"
    bad = {leaf: f for leaf, f in facts.items()
           if f["changes"] not in got["changes"] or not isinstance(f["experiment"], bool)}
    assert not bad, f"options without facts (opt(changes=..., experiment=...)): {bad}"
    live = {leaf for leaf, f in facts.items() if f["changes"] == "live"}
    resumable = {leaf for leaf, f in facts.items() if f["changes"] in ("live", "resume")}
    assert set(lists["LIVE"]) == live and got["live_order"] == [k for k in facts if k in live]
    assert set(lists["RESUMABLE"]) == resumable
    assert set(lists["NOT_EXPERIMENT"]) == {leaf for leaf, f in facts.items() if not f["experiment"]}
    assert set(lists["LIVE"]) <= set(lists["RESUMABLE"]), "a live option must be resumable"
    local = {leaf for leaf, f in facts.items() if f["local"]}
    assert local <= set(lists["RESUMABLE"]), f"places a resume may not change: {sorted(local - resumable)}"
    assert local <= set(lists["NOT_EXPERIMENT"]), \
        f"places counted as experiment: {sorted(local - set(lists['NOT_EXPERIMENT']))}"


def test_option_lists_are_defined_only_by_deriving_them():
    """LIVE / RESUMABLE / NOT_EXPERIMENT are assigned in config/options.py alone, from the options' facts (not
    written out by hand there or anywhere else; importing them is how the rest of dogcat gets them)."""
    found = []
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            for t in targets:
                for name in ast.walk(t):
                    if isinstance(name, ast.Name) and name.id in OPTION_LISTS:
                        found.append((mod, name.id, node))
    where = sorted({f"{mod}: {name}" for mod, name, _ in found if mod != "dogcat.config.options"})
    assert not where, "option lists defined outside config/options.py:\n" + "\n".join(where)
    own = [(name, node) for mod, name, node in found if mod == "dogcat.config.options"]
    assert sorted(name for name, _ in own) == sorted(OPTION_LISTS), own
    got = _option_facts()
    names = set(got["facts"]) - set(got["changes"])  # "resume" is an option and a value of changes=
    for name, node in own:
        by_hand = [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and n.value in names]
        assert not by_hand, f"{name} names options by hand in config/options.py: {by_hand}"
        derived = [c for c in ast.walk(node.value) if isinstance(c, ast.comprehension) and "OPTIONS" in ast.unparse(c.iter)]
        assert derived, f"{name} is not derived from OPTIONS in config/options.py: {ast.unparse(node.value)[:200]}"
