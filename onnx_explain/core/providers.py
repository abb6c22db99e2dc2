"""ONNX Runtime sessions: choosing execution providers (CUDA first when it is there, else CPU) and
building a session with an error that says what went wrong."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import onnxruntime as ort

from onnx_explain.core.errors import ModelLoadError, first_line

log = logging.getLogger(__name__)
_SHORT = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
          "tensorrt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider"}


def resolve_providers(providers: Sequence[str] | str | None, device_id: int = 0) -> list:
    """None -> CUDA then CPU when onnxruntime-gpu sees a GPU, else CPU.  Accepts short names ("cuda").
    CUDA and TensorRT run on GPU `device_id`."""
    available = ort.get_available_providers()
    if providers is None:
        preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return _on_device([p for p in preferred if p in available], device_id)
    names = [providers] if isinstance(providers, str) else (
        list(providers) if isinstance(providers, (list, tuple)) else None)
    if not names or not all(isinstance(p, str) for p in names):
        raise ValueError(f"providers must be a provider name (\"cuda\", \"cpu\" or a full name) or a list of them, "
                         f"got {providers!r}")
    resolved = [_SHORT.get(p.lower(), p) for p in names]
    missing = [p for p in resolved if p not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not available in this onnxruntime; available: "
                         f"{available} (for CUDA install onnx-explain[gpu], which brings onnxruntime-gpu)")
    return _on_device(resolved, device_id)


def _on_device(providers: list[str], device_id: int) -> list:
    """The GPU providers with their device id (ONNX Runtime's provider options), the others as they are;
    the CUDA libraries that onnxruntime-gpu's pip extras bring are loaded first."""
    if any(p in _GPU for p in providers) and hasattr(ort, "preload_dlls"):
        _preload()
    return [(p, {"device_id": str(device_id)}) if p in _GPU else p for p in providers]


_GPU = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@functools.cache
def _preload() -> None:
    try:
        ort.preload_dlls()
    except Exception as e:  # noqa: BLE001 -- the libraries may come from the system instead: ORT says if not
        log.debug("onnxruntime.preload_dlls: %s", e)


def load_session(model: str | bytes, options: ort.SessionOptions | None, providers: list[str],
                 name: str) -> ort.InferenceSession:
    """An InferenceSession for a path or serialised model; ModelLoadError names the file and ONNX
    Runtime's first line of complaint (an unknown op or domain, a type mismatch, a corrupt graph)."""
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own pybind11 exception types for every cause
        raise ModelLoadError(f"ONNX Runtime cannot load {name}: {first_line(e)}") from e
