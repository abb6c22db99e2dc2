"""Checking an exported file against the torch graph it came from, in ONNX Runtime's default setup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporters.errors import ExportValidationError
from exporters.trace import Traced

VALIDATION_BATCH = 3  # differs from the trace batch, so a batch size baked into the graph is caught
RTOL = 1e-3  # of each output's largest magnitude


def validate(path: Path, traced: Traced, seed: int = 0) -> dict[str, float]:
    """Run the file in ONNX Runtime (CPU, default optimisation level) and the traced graph in torch on
    the same random batch; return each output's max error relative to its largest magnitude.

    Raises:
        ExportValidationError: an output differs by more than RTOL, or has a different shape.
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(VALIDATION_BATCH, *traced.input_shape, generator=gen)
    targets = torch.tensor([-1] + [0] * (VALIDATION_BATCH - 1), dtype=torch.int64)
    with torch.no_grad():
        expected = [t.numpy() for t in traced.graph(traced.params, images, targets)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(traced.output_names, {"images": images.numpy(), "targets": targets.numpy()})
    errors, bad = {}, []
    for name, want, have in zip(traced.output_names, expected, got):
        if want.shape != have.shape:
            bad.append(f"{name}: shape {have.shape}, expected {want.shape}")
            continue
        scale = max(float(np.abs(want).max()), 1e-12) if want.size else 1.0
        errors[name] = float(np.abs(want.astype(np.float64) - have).max() / scale) if want.size else 0.0
        if errors[name] > RTOL:
            bad.append(f"{name}: max error {errors[name]:.2e} of its largest magnitude (allowed {RTOL:.0e})")
    if bad:
        raise ExportValidationError(f"{path} disagrees with torch in ONNX Runtime: " + "; ".join(bad))
    return errors
