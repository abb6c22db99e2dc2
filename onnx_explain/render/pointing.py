"""The pointing game (Zhang et al., 2016): does a heatmap's maximum fall on the object?"""

from __future__ import annotations

import numpy as np


def pointing_hits(heatmaps: np.ndarray, boxes: np.ndarray, tolerance: int = 2) -> np.ndarray:
    """bool [N]: whether each heatmap's argmax lies in its box (x0, y0, x1, y1, inclusive), grown by
    `tolerance` pixels on every side (the original uses 15 px at 224; 2 px suits 64-px images)."""
    heatmaps, boxes = np.asarray(heatmaps), np.asarray(boxes)
    if heatmaps.ndim != 3 or 0 in heatmaps.shape or boxes.shape != (len(heatmaps), 4):
        raise ValueError(f"expected heatmaps [N, H, W] and boxes [N, 4] with N, H, W >= 1, got "
                         f"{list(heatmaps.shape)} and {list(boxes.shape)}")
    if heatmaps.dtype.kind not in "uif" or boxes.dtype.kind not in "ui" or not np.isfinite(heatmaps).all():
        raise ValueError(f"expected finite numeric heatmaps and integer boxes, got {heatmaps.dtype} and {boxes.dtype}")
    if isinstance(tolerance, (bool, np.bool_)) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be an integer >= 0 (pixels), got {tolerance!r}")
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, heatmaps.shape[1:])
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    return (xs >= x0 - tolerance) & (xs <= x1 + tolerance) & (ys >= y0 - tolerance) & (ys <= y1 + tolerance)
