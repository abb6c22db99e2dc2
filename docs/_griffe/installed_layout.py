"""A griffe extension for the API reference (mkdocs.yml loads it).

The repository's exporters/ and models/ folders install as onnx_explain.exporters and
onnx_explain.models (pyproject.toml's package-dir), but griffe reads a package from its folder only, so
it would not find them under onnx_explain: this loads them as its subpackages.
"""

from __future__ import annotations

from typing import Any

import griffe

INSTALLED_AS = {"exporters": "exporters", "models": "models"}  # subpackage -> its folder at the repository root


class InstalledLayout(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "onnx_explain" or pkg.filepath is None:
            return
        root = pkg.filepath.parent.parent  # onnx_explain/__init__.py -> the repository root
        for name, folder in INSTALLED_AS.items():
            if name not in pkg.members:
                pkg.set_member(name, loader._load_module(name, root / folder / "__init__.py", parent=pkg))
