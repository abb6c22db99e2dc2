"""bench/gpu.py runs as it will on a GPU, here with --device cpu on the shipped model: maps against the
CPU provider, node placement from ONNX Runtime's profile, and the latency table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_the_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--models", "shapenet",
                           "--batches", "2", "--methods", "gradcam", "smoothgrad", "--timed", "gradcam", "saliency",
                           "integrated_gradients",
                           "--rounds", "1", "--repeats", "1"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "(a) maps agree with the CPU provider" in out and "(b) every node on CPUExecutionProvider" in out
    for label in ("gradcam", "saliency", "integrated_gradients", "pytorch-grad-cam GradCAM", "captum Saliency",
                  "captum IntegratedGradients"):
        assert label in out, out
