"""Choosing ONNX Runtime execution providers: CUDA first when it is there, else CPU."""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

_SHORT = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
          "tensorrt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider"}


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """None -> CUDA then CPU when onnxruntime-gpu sees a GPU, else CPU.  Accepts short names ("cuda")."""
    available = ort.get_available_providers()
    if providers is None:
        preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in preferred if p in available]
    names = [providers] if isinstance(providers, str) else list(providers)
    resolved = [_SHORT.get(p.lower(), p) for p in names]
    missing = [p for p in resolved if p not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not available in this onnxruntime; available: "
                         f"{available} (for CUDA install onnx-explain[gpu], which brings onnxruntime-gpu)")
    return resolved
