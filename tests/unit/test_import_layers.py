"""The import graph of shoal runs one way and has no cycle, counting imports inside functions.

Layers, top to bottom: cli (and the demo) -> study -> staging -> images / cluster -> state -> slurm ->
foundation (runner, errors, paths, and the other leaf modules). A module may import from its own
layer or a lower one, never from a higher one; and no chain of imports, at any depth of the code
(module level, inside functions, under TYPE_CHECKING, importlib.import_module with a constant
name), may lead back to where it started. A function-level import is still a dependency: hiding
one there only moves the failure from import time to run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shoal"

# Highest layer first. A module belongs to the longest prefix listed here ("shoal" itself only to
# the package's __init__, so a new top-level module or package must be placed here explicitly).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("shoal.cli", "shoal.demo", "shoal.__main__"),
    ("shoal.study",),
    ("shoal.model",),  # the study report draws the model's predictions
    ("shoal.staging",),
    ("shoal.images", "shoal.cluster"),
    ("shoal.state",),  # the node state engine: the cluster is one of its backends, never imported
    ("shoal.slurm",),
    ("shoal", "shoal.runner", "shoal.errors", "shoal.paths", "shoal.fsutil", "shoal.bundle",
     "shoal.names", "shoal.limits", "shoal.workloads", "shoal.siteconfig"),
)


def module_name(package: Path, path: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path) -> dict[str, Path]:
    return {module_name(package, p): p for p in sorted(package.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every shoal module NAME imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str, names: list[str]) -> None:
        if not (target == "shoal" or target.startswith("shoal.")):
            return
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
        # `from shoal.x import submodule` depends on the submodule (and on the package itself)
        found.update(subs)
        if target in known and (not subs or len(subs) < len(names)):
            found.add(target)
        elif target not in known:
            found.add(target)  # unknown: reported as such

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, [a.name for a in node.names])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            add(node.args[0].value, [])
    found.discard(name)
    return found


def private_uses(name: str, path: Path, known: set[str]) -> list[str]:
    """Private names (leading underscore) NAME takes from other shoal modules: a module's private
    helpers are not an API, so a caller elsewhere means the helper wants a public home."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("shoal"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in known:
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_") and not a.name.startswith("__") and node.module != name:
                    out.append(f"{name} uses private {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != name):
            out.append(f"{name} uses private {aliases[node.value.id]}.{node.attr}")
    return sorted(set(out))


def graph(package: Path) -> dict[str, set[str]]:
    mods = modules(package)
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def layer_of(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            inside = name == p or (p != "shoal" and name.startswith(p + "."))
            if inside and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def problems(package: Path) -> list[str]:
    g = graph(package)
    found: list[str] = []
    for name in sorted(g):
        if layer_of(name) is None:
            found.append(f"{name}: no layer (add it to LAYERS in tests/unit/test_import_layers.py)")
    for name, targets in sorted(g.items()):
        mine = layer_of(name)
        for t in sorted(targets):
            if t not in g:
                found.append(f"{name} imports {t}, which does not exist")
                continue
            theirs = layer_of(t)
            if mine is not None and theirs is not None and theirs < mine:
                found.append(f"{name} imports {t}: a higher layer ({'/'.join(LAYERS[theirs])} "
                             f"above {'/'.join(LAYERS[mine])})")
    found += [f"import cycle: {' <-> '.join(c)}" for c in cycles(g)]
    # and between subsystems (shoal.cluster, shoal.images, ...), which may share a layer
    subsystems: dict[str, set[str]] = {}
    for name, targets in g.items():
        mine_s = ".".join(name.split(".")[:2])
        subsystems.setdefault(mine_s, set()).update(
            ".".join(t.split(".")[:2]) for t in targets if ".".join(t.split(".")[:2]) != mine_s)
    found += [f"import cycle between subsystems: {' <-> '.join(c)}" for c in cycles(subsystems)]
    mods = modules(package)
    for name, path in mods.items():
        found += private_uses(name, path, set(mods))
    return found


def test_shoal_imports_run_one_way_without_cycles() -> None:
    assert problems(PACKAGE) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "shoal" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "shoal"


@pytest.mark.parametrize("where", ["module", "function"])
def test_a_cycle_is_found_also_inside_functions(tmp_path: Path, where: str) -> None:
    back = ("from shoal.images import base\n" if where == "module"
            else "def f():\n    from shoal.images.base import x\n    return x\n")
    pkg = _tree(tmp_path, {
        "__init__.py": "", "images/__init__.py": "",
        "images/base.py": "x = 1\n\ndef g():\n    from shoal.images.build import y\n    return y\n",
        "images/build.py": back + "y = 2\n",
    })
    assert problems(pkg) == ["import cycle: shoal.images.base <-> shoal.images.build"]


def test_an_import_against_the_layer_order_is_found(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "__init__.py": "", "cluster/__init__.py": "", "staging/__init__.py": "",
        "staging/bundle.py": "X = 1\n",
        "cluster/manager.py": "def up():\n    from shoal.staging.bundle import X\n    return X\n",
        "cli/__init__.py": "", "cli/study.py": "_private = 1\n",
        "cluster/upgrade.py": "from shoal.cluster import manager\nmanager._ok = 1\n",
        "demo.py": "from shoal.cli.study import _private\n",
    })
    assert problems(pkg) == [
        "shoal.cluster.manager imports shoal.staging.bundle: a higher layer (shoal.staging above "
        "shoal.images/shoal.cluster)",
        "shoal.cluster.upgrade uses private shoal.cluster.manager._ok",
        "shoal.demo uses private shoal.cli.study._private",
    ]


def test_relative_and_dynamic_imports_count(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "__init__.py": "", "slurm/__init__.py": "", "study/__init__.py": "",
        "study/db.py": "X = 1\n",
        "slurm/client.py": "import importlib\nm = importlib.import_module('shoal.study.db')\n",
        "slurm/hostlist.py": "from ..study import db\n",
    })
    assert [p.split(":")[0] for p in problems(pkg)] == [
        "shoal.slurm.client imports shoal.study.db", "shoal.slurm.hostlist imports shoal.study.db"]
