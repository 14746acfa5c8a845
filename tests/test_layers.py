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
    ("evaluation", "from lightning_modules.checkpoints import load_classifier\nimport numpy\n", False),
    ("pipeline", "from . import run\nfrom pipeline.cli import train\n", False),  # its own package
])
def test_the_walker_sees_upward_imports(package, source, bad):
    assert bool(violations(package, "m.py", source)) is bad
