"""The tree shows the architecture: the layers import one way, and installing claims one top-level name.

    onnx_explain.core  <-  runtime, perturbation, render  <-  serving, exporters  <-  datasets  <-  cli

(onnx_explain.models, the shipped model and its dataset, imports nothing of the project.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"onnx_explain": ROOT / "onnx_explain", "onnx_explain.exporters": ROOT / "exporters",
           "onnx_explain.models": ROOT / "models"}
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "onnx_explain.core": set(),
    "onnx_explain.render": {"onnx_explain.core"},
    "onnx_explain.runtime": {"onnx_explain.core"},
    "onnx_explain.perturbation": {"onnx_explain.core"},
    "onnx_explain.exporters": {"onnx_explain.core", "onnx_explain.runtime", "onnx_explain.models"},
    "onnx_explain.models": set(),
    "onnx_explain.serving": {"onnx_explain.core", "onnx_explain.render", "onnx_explain.runtime",
                             "onnx_explain.perturbation"},
    "onnx_explain.datasets": {"onnx_explain.core", "onnx_explain.render", "onnx_explain.serving"},
    "onnx_explain.cli": {"onnx_explain", "onnx_explain.core", "onnx_explain.render", "onnx_explain.runtime",
                         "onnx_explain.perturbation", "onnx_explain.serving", "onnx_explain.datasets",
                         "onnx_explain.exporters", "onnx_explain.models"},
    "onnx_explain": {"onnx_explain.core", "onnx_explain.render", "onnx_explain.runtime", "onnx_explain.perturbation",
                     "onnx_explain.datasets"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def _layer(module: str) -> str:
    return next((layer for layer in sorted(ALLOWED, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), module)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "onnx_explain" or n.startswith("onnx_explain.")}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_go_one_way(module):
    layer = _layer(module)
    wrong = {n for n in _imports(_modules()[module]) if _layer(n) not in ALLOWED[layer] | {layer}}
    assert not wrong, f"{module} ({layer}) imports {sorted(wrong)}; it may import {sorted(ALLOWED[layer])}"


def test_every_layer_is_installed_under_one_top_level_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, path in _modules().items() if path.name == "__init__.py"}
    assert set(config["packages"]) == packages
    assert {p.split(".")[0] for p in config["packages"]} == {"onnx_explain"}
    assert config["package-dir"] == {"onnx_explain.exporters": "exporters", "onnx_explain.models": "models"}
