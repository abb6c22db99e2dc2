"""The runtime's named errors.  Each is a ValueError, so callers that catch ValueError keep working."""

from __future__ import annotations

import numpy as np


class NonFiniteResultError(ValueError):
    """ONNX Runtime returned NaN or inf where a finite map or score was expected: the model overflowed
    float32 on these inputs (images or parameters too large), or the model itself outputs NaN."""


class ModelLoadError(ValueError):
    """ONNX Runtime could not build a session for a file (an op it does not know, a corrupt graph)."""


def first_line(error: BaseException) -> str:
    """What an error says, in one line: dependencies' messages run to many (ONNX Runtime's, numpy's)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_finite(outputs: dict[str, np.ndarray], what: str) -> None:
    """Raise NonFiniteResultError naming every output of `outputs` (name -> [N, ...]) that holds NaN or
    inf, and the images they are in."""
    bad = {}
    for name, value in outputs.items():
        if value is not None and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            rows = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1)) if value.ndim else []
            bad[name] = [int(i) for i in rows]
    if bad:
        listed = "; ".join(f"{name} (images {rows})" for name, rows in bad.items())
        raise NonFiniteResultError(
            f"{what} became non-finite: {listed}.  The model overflowed float32 on these inputs or outputs NaN "
            "itself: check the images' scale and the parameters (baselines, noise_std, ...)")
