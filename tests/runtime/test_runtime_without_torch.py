"""The runtime package must work where torch cannot be imported (a deployment box)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_explain_with_torch_unimportable(exported):
    path = exported("shapenet").path
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import onnx_explain
        from onnx_explain.cli import main
        result = onnx_explain.Explainer({str(path)!r}).explain(np.zeros((2, 3, 64, 64), np.float32))
        assert result["gradcam"].heatmap.shape == (2, 64, 64)
        loaded = [m for m in sys.modules if sys.modules[m] is not None]
        assert not any(m.startswith(("torch", "onnx_explain.exporters")) for m in loaded)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
