"""Weakly supervised localisation (Zhou et al.; Selvaraju et al.): bounding boxes from heatmaps."""

from __future__ import annotations

import cv2
import numpy as np


def boxes(heatmap: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The box around the largest connected region where the heatmap reaches `threshold` of its maximum.

    Args:
        heatmap: [H, W], [N, H, W], or [N, k, H, W] from a file with top_k=k; e.g. result["gradcam"].heatmap.
        threshold: fraction of each map's maximum, in (0, 1] (Zhou et al. use 0.2, Selvaraju et al. 0.15).

    Returns:
        int64 [4], [N, 4] or [N, k, 4]: (x0, y0, x1, y1), inclusive pixel coordinates; a map that is zero everywhere
        gives the whole image.

    Example:
        >>> boxes(result["gradcam"].heatmap, threshold=0.2)
    """
    maps = np.asarray(heatmap, dtype=np.float32)
    if maps.ndim not in (2, 3, 4) or 0 in maps.shape:
        raise ValueError(f"heatmap must be [H, W], [N, H, W] or [N, k, H, W], got shape {list(maps.shape)}")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the map's maximum, in (0, 1]; got {threshold}")
    if not np.isfinite(maps).all():
        raise ValueError("heatmap contains NaN or inf values")
    found = np.stack([_largest_region_box(m, threshold) for m in maps.reshape(-1, *maps.shape[-2:])])
    return found.reshape(*maps.shape[:-2], 4)


def _largest_region_box(heat: np.ndarray, threshold: float) -> np.ndarray:
    h, w = heat.shape
    top = float(heat.max())
    if top <= 0:
        return np.array([0, 0, w - 1, h - 1], np.int64)
    mask = (heat >= threshold * top).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))  # label 0 is the background
    x, y, bw, bh = (int(stats[largest, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                     cv2.CC_STAT_HEIGHT))
    return np.array([x, y, x + bw - 1, y + bh - 1], np.int64)
