"""The Explainer's device options: IO binding that leaves outputs where the caller wants them, the GPU's
device id, a warm-up run, and the install without any ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import images

import onnx_explain as ox
from onnx_explain.core.providers import resolve_providers


def test_run_on_device_equals_run(exported):
    e = exported("shapenet")
    x = images(1)  # one run either way (run() splits a larger batch into chunks of the file's points)
    feeds = {"images": x, "targets": np.full(1, -1, np.int64)}
    names = ["logits", "gradcam@features.heatmap", "saliency.raw"]
    bound = e.explainer.run_on_device(names, feeds, device="cpu")
    for value, want in zip(bound, e.explainer.run(names, feeds), strict=True):
        np.testing.assert_array_equal(value.numpy(), want)
    with pytest.raises(ValueError, match="unknown outputs \\['nope'\\]"):
        e.explainer.run_on_device(["nope"], feeds, device="cpu")


def test_device_id_and_warm_up(exported):
    path = exported("shapenet").path
    explainer = ox.Explainer(path, providers="cpu", device_id=1)  # the CPU provider has no device to pick
    assert explainer.device_id == 1 and explainer.providers == ["CPUExecutionProvider"]
    explainer.warm_up(batch=2)
    with pytest.raises(ValueError, match="device_id must be an integer from 0"):
        ox.Explainer(path, providers="cpu", device_id=-1)


def test_gpu_providers_get_the_device_id(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    assert resolve_providers(None, device_id=3) == [("CUDAExecutionProvider", {"device_id": "3"}),
                                                    "CPUExecutionProvider"]
    assert resolve_providers(["cuda", "cpu"]) == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]


def test_import_without_onnxruntime_says_which_extra():
    script = textwrap.dedent("""
        import sys
        sys.modules["onnxruntime"] = None  # neither onnxruntime nor onnxruntime-gpu installed
        try:
            import onnx_explain
        except ImportError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "pip install 'onnx-explain[cpu]', or 'onnx-explain[gpu]'" in done.stdout, done.stdout + done.stderr
