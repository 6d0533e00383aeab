"""The package's layers (docs/architecture.md, "Layers"): every module belongs to one; a module imports only
from its own layer or lower ones, module-level and function-level imports alike, and no import cycle exists."""
import ast
import fnmatch
import os
import sys

import pytest

from conftest import REPO

PACKAGE = "isgan_torchreid"
# lowest first; a module's name (without the package prefix, "" for the package itself) matches one pattern
LAYERS = [
    ("bottom", ["errors", "comm", "storage", "image_files", "allocator", "console"]),
    ("compat and config", ["compat", "config", "defaults", "data.synthetic.spec"]),
    ("data, models, losses", ["data", "data.*", "models", "models.*", "losses", "losses.*"]),
    ("engine", ["engine", "engine.*"]),
    ("deploy and pictures", ["deploy", "deploy.*", "visualize", "visualize.canvas", "visualize.disentangle",
                             "visualize.ranking", "visualize.samples"]),
    ("tools", ["", "__main__", "cli", "cli.*", "commands", "compare", "benchmarks", "benchmarks.*", "visualize.main"]),
]


def package_modules(root):
    """{module name without the package prefix: path} of every .py file under ``root``/PACKAGE."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.join(root, PACKAGE))[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix("__init__").rstrip(".")] = path
    return modules


def imports_of(name, path, modules):
    """The package's modules that ``name`` (at ``path``) imports anywhere in its file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                parts = package.split(".") if package else []
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name[len(PACKAGE) + 1:] for a in node.names
                         if a.name == PACKAGE or a.name.startswith(PACKAGE + "."))
    return {m for m in found if m in modules and m != name}


def layer_of(name):
    """Index in LAYERS of the layer ``name`` belongs to (None when no pattern matches it)."""
    return next((i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(name, p)
                                                                      for p in patterns)), None)


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges) + 100))
    try:
        for v in list(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def upward(edges):
    """["a -> b (layer -> higher layer)"] for each import from a lower layer into a higher one."""
    return [f"{a} -> {b} ({LAYERS[layer_of(a)][0]} -> {LAYERS[layer_of(b)][0]})"
            for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]


@pytest.fixture(scope="module")
def graph():
    modules = package_modules(REPO)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    assert [name for name in sorted(graph) if layer_of(name) is None] == []


def test_no_import_runs_upward(graph):
    assert upward(graph) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_forbid(graph):
    """The walk finds module- and function-level imports, and each check fails on a graph that breaks it."""
    assert {"engine.checkpoint", "engine.hooks", "engine.objective"} <= graph["engine.staged"]
    assert "engine.staged" in graph["benchmarks.common"]  # imported inside a function (our_engine)
    broken = {name: set(targets) for name, targets in graph.items()}
    broken["engine.staged"].add("deploy")  # the engine reaching into the deploy layer
    assert upward(broken) == ["engine.staged -> deploy (engine -> deploy and pictures)"]
    broken["deploy"].add("deploy.encoder")
    broken["deploy.encoder"].add("deploy")  # a package and its module importing each other
    assert any({"deploy", "deploy.encoder"} <= set(component) for component in cycles(broken))
