"""The docs cannot drift: the README's Python runs as written, and the docs site builds with no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_python_runs_on_the_shipped_model(tmp_path, monkeypatch):
    from onnx_explain.models.shapenet import load_shapenet
    from onnx_explain.models.shapes import CLASSES, TEST_SEED, make_shapes

    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2, "the README's quickstart has Python blocks"
    monkeypatch.chdir(tmp_path)
    namespace = {"images": make_shapes(4, TEST_SEED).images, "model": load_shapenet(), "names": list(CLASSES)}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102


def test_readme_has_the_two_setup_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    assert test_command in readme and test_command in ci
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[export]" && .venv/bin/onnx-explain demo' in readme
    assert len(readme.splitlines()) <= 250


def test_docs_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
