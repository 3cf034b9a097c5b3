"""The import layers of dmcpfx (README "Layout"): stages import only downward.

Every module of ``dmcpfx/`` and ``passes/`` (installed as ``dmcpfx.passes``) is parsed with
``ast``; each ``import`` / ``from ... import`` of a dmcpfx module, at module level or inside
a function, is an arrow. The test fails on an arrow from a lower layer to a higher one, on
a private name (``_x``) imported from another module, on an import circle, and on a pass
that imports anything but torch, other passes and the analysis records.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parent.parent

#: layer rank of each module, lowest first; a module may import its own layer or lower ones
SHARED = ("errors", "fileio", "yamlio", "progress", "finite", "compare", "inputs", "batches", "amp", "training", "harness",
          "arch", "plots", "accuracy", "counting", "version", "numerics", "api_checks", "labels", "image_files", "data", "data_fashion", "idx", "models", "demo_models",
          "options", "memory")
LAYERS = {
    "shared": 0,        # contracts below every stage: the modules of SHARED
    "analysis": 1,      # dmcpfx.analysis: channel groups of an exported graph
    "passes": 2,        # dmcpfx.passes: every FX graph rewrite
    "search": 3,        # dmcpfx.search: search space, DMCP search, derive
    "materialize": 4,   # dmcpfx.materialize: the compact model
    "product": 5,       # dmcpfx.product: retrain, ONNX, run directory, report
    "app": 6,           # dmcpfx (the public namespace), config, config_checks, pipeline, cli
}
APP = ("config", "config_checks", "pipeline", "cli")
#: what a pass may import from dmcpfx besides other passes
PASS_MAY_IMPORT = {"dmcpfx.analysis.records"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts == ["dmcpfx"]:
        return "app"
    head = parts[1]
    if head in SHARED:
        return "shared"
    if head in APP:
        return "app"
    if head in ("analysis", "passes", "search", "materialize", "product"):
        return head
    raise AssertionError(f"module {module} is in no layer: add it to the table in {__file__}")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in (("dmcpfx", ["dmcpfx"]), ("passes", ["dmcpfx", "passes"])):
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = prefix + list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path):
    """Yield ``(target module, imported names, line)`` for every dmcpfx import of ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dmcpfx":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dmcpfx":
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            for n in submodules:  # ``from . import data``: an arrow to the submodule
                yield f"{target}.{n}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                yield target, rest, node.lineno


EDGES = [(m, t, names, line) for m, p in MODULES.items() for t, names, line in _imports(m, p)]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_arrow_runs_back_up():
    bad = [f"{m}:{line} ({layer_of(m)}) imports {t} ({layer_of(t)})" for m, t, _, line in EDGES
           if LAYERS[layer_of(t)] > LAYERS[layer_of(m)]]
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_modules():
    bad = [f"{m}:{line} imports {n} from {t}" for m, t, names, line in EDGES
           for n in names if n.startswith("_") and not n.endswith("__") and t != m]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = nx.DiGraph((m, t) for m, t, _, _ in EDGES if t != m)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_passes_import_torch_and_the_analysis_records_only():
    bad = []
    for module, path in MODULES.items():
        if layer_of(module) != "passes":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [node.module or ""]
            else:
                continue
            for name in roots:
                root = name.split(".")[0]
                if root == "dmcpfx":
                    ok = name.startswith("dmcpfx.passes") or name in PASS_MAY_IMPORT
                else:  # torch, or the standard library
                    ok = root == "torch" or root in _STDLIB
                if not ok:
                    bad.append(f"{module}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)


_STDLIB = {"__future__", "copy", "operator", "re", "warnings", "contextlib", "typing", "dataclasses",
           "itertools", "functools", "collections", "math"}


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` (``dmcpfx.x.y``) names a module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_reference_names_something_that_exists():
    """Docstrings, the README and the benchmarks name only modules and objects that exist."""
    files = list(MODULES.values()) + [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    bad = []
    for path in files:
        for match in sorted(set(re.findall(r"(?<![\w/.])dmcpfx(?:\.[A-Za-z_]\w*)+", path.read_text()))):
            if not _resolves(match.rstrip(".")):
                bad.append(f"{path.relative_to(REPO)}: {match}")
    assert not bad, "\n".join(bad)
