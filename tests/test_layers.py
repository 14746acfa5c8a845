"""Imports point only down the layers (``core/__init__.py``): a module may import its own
package and the packages of lower layers, never a higher or a sibling one, not even inside a
function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "datamodules": 1, "lightning_modules": 2, "evaluation": 3, "callbacks": 4,
          "synthesis": 5, "deploy": 5, "pipeline": 6}


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import anywhere in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, name: str, source: str) -> list[str]:
    """``name:line imports <package>`` for each import of a layer not below ``package``'s."""
    rank = LAYERS[package]
    return [f"{name}:{line} ({package}) imports {target}" for line, target in imported_packages(source)
            if target in LAYERS and target != package and LAYERS[target] >= rank]


def test_no_module_imports_a_higher_or_sibling_layer():
    found, modules = [], 0
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            modules += 1
            found += violations(package, str(path.relative_to(REPO)), path.read_text())
    assert modules > 60  # the walk found the packages
    assert not found, "imports against the layers:\n" + "\n".join(found)


@pytest.mark.parametrize(("package", "source", "bad"), [
    ("lightning_modules", "def f():\n    from evaluation.writer import predict_probs\n", True),  # inside a function
    ("core", "import datamodules.splits\n", True),  # core imports nothing of ours
    ("synthesis", "from deploy.export import main\n", True),  # a sibling of the same layer
    ("evaluation", "from lightning_modules.classifier import Classifier\nimport numpy\n", False),
    ("pipeline", "from . import run\nfrom pipeline.cli import train\n", False),  # its own package
])
def test_the_walker_sees_upward_imports(package, source, bad):
    assert bool(violations(package, "m.py", source)) is bad


def own_imports(module: str, source: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` (a dotted name; a package's ``__init__`` by the
    package's name) imports anywhere in ``source``, relative imports included."""
    package = module if f"{module}.__init__" in modules else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" if {f"{base}.{a.name}", f"{base}.{a.name}.__init__"} & modules else base
                     for a in node.names]  # a module of the package, else a name defined in ``base``
        else:
            continue
        for name in names:
            while name and name not in modules and f"{name}.__init__" not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """One circle of imports (``[a, b, ..., a]``) per circle found among the modules of
    ``sources`` (``{dotted name: source}``; a package's ``__init__`` as ``<package>.__init__``)."""
    modules = set(sources)
    graph = {m.removesuffix(".__init__"): own_imports(m.removesuffix(".__init__"), s, modules)
             for m, s in sources.items()}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_two_modules_of_a_package_import_each_other_around_a_circle():
    found = []
    for package in LAYERS:
        sources = {".".join(p.relative_to(REPO).with_suffix("").parts): p.read_text()
                   for p in sorted((REPO / package).rglob("*.py"))}
        found += [" -> ".join(cycle) for cycle in import_cycles(sources)]
    assert not found, "import circles inside a package:\n" + "\n".join(found)


@pytest.mark.parametrize(("sources", "cycle"), [
    ({"pipeline.cli": "def train():\n    from pipeline.stages import run\n",  # the circle of issue 33
      "pipeline.stages": "from pipeline.stage_config import compose_stage\n",
      "pipeline.stage_config": "from pipeline.cli import CONF_DIR\n"},
     ["pipeline.cli", "pipeline.stages", "pipeline.stage_config", "pipeline.cli"]),
    ({"core.__init__": "from . import io\n", "core.io": "from core import tasks\n", "core.tasks": "import os\n"},
     None),
    ({"a.x": "from .y import f\n", "a.y": "from . import x\n"}, ["a.x", "a.y", "a.x"]),
    ({"a.x": "from a.y import f\n", "a.y": "import numpy\n"}, None),
])
def test_the_walker_sees_import_circles(sources, cycle):
    assert import_cycles(sources) == ([cycle] if cycle else [])


MAX_PARAMETERS = 16  # more belong in typed option groups (datamodules/options.py, lightning_modules/mlo_options.py)


def constructor_sizes(package: str) -> dict[str, int]:
    """``{module.Class: parameters of its constructor}`` (dataclass fields included) of every
    class defined in ``package``'s modules."""
    import importlib
    import inspect
    import pkgutil

    sizes = {}
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and "__init__" in vars(cls):
                sizes[f"{info.name}.{name}"] = len(inspect.signature(cls).parameters)
    return sizes


def test_no_constructor_in_data_or_models_takes_more_than_16_parameters():
    sizes = {**constructor_sizes("datamodules"), **constructor_sizes("lightning_modules")}
    assert {"datamodules.image_datamodule.ImageTableDataModule", "lightning_modules.diffusion.ClassConditionedDiffusion",
            "datamodules.options.LoaderOptions"} <= set(sizes)  # the walk reached classes and dataclasses
    long = {name: n for name, n in sizes.items() if n > MAX_PARAMETERS}
    assert not long, f"constructors with more than {MAX_PARAMETERS} parameters (group them): {long}"


def test_modules_import_helpers_from_helpers_never_from_another_test_module():
    """Shared test code lives in tests/helpers.py (plain functions) and tests/conftest.py
    (fixtures, never imported): a test module importing another test module (or conftest)
    runs or couples to that module's tests."""
    found = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if isinstance(node, ast.ImportFrom) and node.module == "tests":
                names = [f"tests.{a.name}" for a in node.names]
            found += [f"{path.name}:{node.lineno} imports {m}" for m in names
                      if m.startswith("tests.") and m.split(".")[1].startswith(("test_", "conftest"))]
    assert not found, "test modules importing test modules:\n" + "\n".join(found)
