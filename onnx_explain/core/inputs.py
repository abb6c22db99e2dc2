"""Checks at the API edge: bad images or targets get a ValueError that says what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INT64, FLOAT32 = np.iinfo(np.int64), np.finfo(np.float32)


def check_images(images: object, input_shape: Sequence[int]) -> np.ndarray:
    """float32 [N, C, H, W] matching the graph's [C, H, W], finite."""
    expected = f"float32 [N, {', '.join(map(str, input_shape))}]"
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array {expected}, got {type(images).__name__}")
    if images.dtype != np.float32:
        raise ValueError(f"images must be {expected}, got dtype {images.dtype} "
                         "(convert with .astype(np.float32), scaled as the model expects)")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape) or images.shape[0] == 0:
        hint = "; add a batch axis with images[None]" if images.shape == tuple(input_shape) else ""
        raise ValueError(f"images must be {expected}, got shape {list(images.shape)}{hint}")
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).any(axis=(1, 2, 3)).sum())
        raise ValueError(f"images contain NaN or inf values ({bad} of {len(images)} images); expected finite values")
    return np.ascontiguousarray(images)


def check_targets(targets: object, n: int, num_classes: int, top_k: int = 1, what: str = "class") -> np.ndarray:
    """None (the predicted classes), one class for all, or int64 [N] ([N, k] for a graph exported with
    top_k=k, where None means the k highest classes); -1 means predicted (in column j, the j-th highest).
    `what` names a target in messages: "class", or a channel for feature targets."""
    shape = (n,) if top_k == 1 else (n, top_k)
    if targets is None:
        return np.full(shape, -1, dtype=np.int64)
    try:
        arr = np.asarray(targets)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"targets must be integer {what} indices, one per image ({n}); got {targets!r}") from e
    if arr.size == 0:
        raise ValueError(f"targets is empty; expected one {what} index per image ({n}), or None for the predicted")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer {what} indices, got dtype {arr.dtype}")
    if arr.ndim == 0 and top_k == 1:
        arr = np.full(n, arr)
    if arr.shape != shape:
        expected = (f"int64 [N] = [{n}] (one {what} per image" if top_k == 1 else
                    f"int64 [N, k] = [{n}, {top_k}] (this file explains {top_k} per image")
        raise ValueError(f"targets must be {expected}, -1 for the strongest), got shape {list(arr.shape)}")
    bad = arr[(arr < -1) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(f"targets {bad.tolist()} out of range; expected -1 (predicted {what}) or 0..{num_classes - 1}")
    return arr.astype(np.int64)


def check_baselines(baselines: object, n: int, input_shape: Sequence[int]) -> np.ndarray:
    """A number, one baseline [C, H, W] or [1, C, H, W] for the whole batch, or one per image [N, C, H, W];
    returned float32 [1 or N, C, H, W], finite."""
    shape = tuple(input_shape)
    if isinstance(baselines, np.ndarray) and baselines.ndim == 0 and baselines.dtype.kind in "iuf":
        baselines = baselines.item()
    if isinstance(baselines, (int, float, np.integer, np.floating)) and not isinstance(baselines, (bool, np.bool_)):
        if not abs(_as_float(baselines)) <= FLOAT32.max:  # NaN fails this too
            raise ValueError(f"baselines must be finite and within float32's range, got {baselines!r}")
        return np.full((1, *shape), baselines, np.float32)
    if not (isinstance(baselines, np.ndarray) and baselines.dtype.kind == "f"):
        raise ValueError(f"baselines must be a number or a float32 array, got {_described(baselines)}")
    arr = baselines[None] if baselines.shape == shape else baselines
    if arr.ndim != 4 or arr.shape[1:] != shape or arr.shape[0] not in (1, n):
        raise ValueError(f"baselines must be a number, [{', '.join(map(str, shape))}], [1, ...] or one per image "
                         f"[{n}, ...], got shape {list(arr.shape)}")
    if not np.isfinite(arr).all() or np.abs(arr).max() > FLOAT32.max:
        raise ValueError("baselines contain NaN, inf or values beyond float32's range; expected finite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_scalar(name: str, value: object, kind: str) -> np.ndarray:
    """A finite non-negative float32 ("f") or an int64 ("i") as the graph's 0-d input."""
    if kind == "i":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not INT64.min <= int(value) <= INT64.max:
            raise ValueError(f"{name} must fit in int64 ({INT64.min}..{INT64.max}), got {value!r}")
        return np.array(int(value), np.int64)
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
            or not 0 <= _as_float(value) <= FLOAT32.max):  # NaN fails the range test
        raise ValueError(f"{name} must be a finite number >= 0 that fits in float32 (at most {FLOAT32.max:.3g}), "
                         f"got {value!r}")
    return np.array(value, np.float32)


def check_flag(name: str, value: object) -> np.ndarray:
    """A Python or numpy bool (a 0-d bool array too) as the graph's 0-d bool input."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype == np.bool_:
        value = value.item()
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return np.array(bool(value))


def check_count(name: str, value: object, low: int = 1) -> int:
    """A whole number of things (an int, not a bool) of at least `low` that fits in int64."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not low <= int(value) <= INT64.max:
        raise ValueError(f"{name} must be an integer from {low} to {INT64.max}, got {value!r}")
    return int(value)


def _described(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return type(value).__name__


def _as_float(value: int | float | np.number) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return float("inf")


def check_methods(methods: object, available: Sequence[str], unknown_message: str = "") -> list[str]:
    """The chosen method names, in order, each once: one name or a non-empty list or tuple of names, each
    among `available`.  `unknown_message` replaces the end of the message for unknown names.

    Raises:
        ValueError: not a name or a list of names, an empty list, or a name that is not available.
    """
    names = [methods] if isinstance(methods, str) else list(methods) if isinstance(methods, (list, tuple)) else None
    if not names or not all(isinstance(m, str) for m in names):
        raise ValueError(f"methods must be a method name or a non-empty list of them ({sorted(available)}), "
                         f"got {methods!r}")
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; {unknown_message or f'available: {sorted(available)}'}")
    return list(dict.fromkeys(names))
