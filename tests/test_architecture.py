"""The package reads as the pipeline: no import cycles, no module shadowed by a function of the same name, and
data flowing one way (nothing imports studies or cli; nothing below grid imports curvature or paths)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import lossatlas

SRC = Path(lossatlas.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every lossatlas module ``name`` imports, at module level, inside functions or in a ``TYPE_CHECKING`` block:
    a lazy import still couples the modules, and an import for annotations only is still a circle (training and
    training_logs once imported each other that way)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "lossatlas":
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is not a cycle with them
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_an_import_for_annotations_only_counts(tmp_path: Path) -> None:
    """The circle training -> training_logs -> training ran through a ``TYPE_CHECKING`` block; the finder sees it."""
    logs = tmp_path / "training_logs.py"
    logs.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                    "    from lossatlas.training import TrainSpec\n")
    known = {"lossatlas.training", "lossatlas.training_logs"}
    graph = {"lossatlas.training": {"lossatlas.training_logs"},
             "lossatlas.training_logs": _imports("lossatlas.training_logs", logs, known)}
    assert _cycle(graph) == ["lossatlas.training", "lossatlas.training_logs", "lossatlas.training"]


def test_data_flows_one_way() -> None:
    graph = _graph()
    below_grid = ("lossatlas.engine", "lossatlas.params", "lossatlas.data", "lossatlas.models", "lossatlas.specs",
                  "lossatlas.store", "lossatlas.execute", "lossatlas.directions", "lossatlas.errors")
    for name, deps in graph.items():
        for dep in deps:
            if dep.startswith("lossatlas.cli"):
                assert name.startswith("lossatlas.cli") or name == "lossatlas.__main__", f"{name} imports {dep}"
            if dep.startswith("lossatlas.studies"):
                assert name.startswith(("lossatlas.studies", "lossatlas.cli")), f"{name} imports {dep}"
            if name.startswith(below_grid):
                assert not dep.startswith(("lossatlas.curvature", "lossatlas.paths", "lossatlas.grid",
                                           "lossatlas.landscape", "lossatlas.viz")), f"{name} imports {dep}"


def test_no_module_is_shadowed_by_a_function_of_its_name() -> None:
    """``import lossatlas.x.y`` then ``lossatlas.x.y`` must be the module, not a function bound in x's __init__."""
    shadowed = []
    for info in pkgutil.walk_packages(lossatlas.__path__, "lossatlas."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        attribute = getattr(parent, leaf, module)
        if attribute is not module:
            shadowed.append(f"{info.name} (shadowed by {type(attribute).__name__} {leaf})")
    assert not shadowed, shadowed
