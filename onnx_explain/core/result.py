"""What Explainer.explain returns: logits, the classes explained and one map per method."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Map:
    """One method's explanation of a batch.

    heatmap: float32 [N, H, W] in [0, 1] at input resolution.
    raw: the method's own quantity before reduction and normalisation (the signed input gradient
        [N, C, H, W] for saliency and guided backprop; ReLU(sum_k w_k A_k) [N, h, w] for gradcam).
    delta: for lrp_epsilon, deeplift and integrated_gradients, the sum of `raw` minus the target's logit
        (lrp_epsilon) or minus its change from the baseline (captum's convergence delta); else None.
    grid: for occlusion, the score drop per window position [N, nh, nw]; else None.
    plan, flop_ratio: for occlusion, the plan that ran ("incremental" or "full") and the incremental
        plan's FLOPs over the full plan's, over all windows; else None.
    """

    method: str
    layer: str | None
    heatmap: np.ndarray
    raw: np.ndarray
    delta: np.ndarray | None = None  # [N], for methods whose attributions sum to the score (change)
    grid: np.ndarray | None = None
    plan: str | None = None
    flop_ratio: float | None = None


@dataclass(frozen=True)
class Explanation:
    """What explain returns, for exported files and pure-inference methods alike.

    logits [N, classes] of the images; targets int64 [N] (or [N, k]), the classes explained; maps keyed by
    (method, layer), layer None for a method with one map; class_names, when the file names its classes.
    """

    logits: np.ndarray
    targets: np.ndarray
    maps: dict[tuple[str, str | None], Map]
    class_names: tuple[str, ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for m, _ in self.maps))

    def __getitem__(self, key: str | tuple[str, str]) -> Map:
        """result["gradcam"], or result["gradcam", "layer4"] when the graph taps several layers."""
        if isinstance(key, tuple):
            if key in self.maps:
                return self.maps[key]
            raise KeyError(f"no map for {key}; this result has {sorted(self.maps, key=str)}")
        found = [m for (name, _), m in self.maps.items() if name == key]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(f"no map for method {key!r}; this result has {list(self.methods)}")
        layers = [m.layer for m in found]
        raise KeyError(f"method {key!r} was computed at layers {layers}; ask for result[{key!r}, layer]")

    def fused(self, method: str) -> Map:
        """One map from every layer the method was computed at, aggregated as pytorch-grad-cam aggregates
        target layers: each layer's rectified map scaled to [0, 1] and resized to the input (cv2, from
        `raw` at layer resolution; the guided variants use their heatmaps), averaged, scaled again.
        `raw` holds the per-layer maps [N, L, H, W] that were averaged; `layer` joins their names with "+"."""
        found = [m for (name, _), m in self.maps.items() if name == method]
        if not found:
            raise KeyError(f"no map for method {method!r}; this result has {list(self.methods)}")
        if found[0].layer is None:
            raise KeyError(f"{method!r} is an input method: it has one map, nothing to fuse")
        per_layer = [_resized_cam(m) if m.raw.ndim == m.heatmap.ndim else m.heatmap for m in found]
        stacked = np.maximum(np.stack(per_layer, axis=1), 0)  # [N, L, (k,) H, W]
        return Map(method, "+".join(m.layer for m in found), _min_max(stacked.mean(axis=1)), stacked)

    def __contains__(self, key: object) -> bool:
        return key in self.methods or key in self.maps

    @property
    def labels(self) -> list:
        """The class name of each explained target (N names, or N lists of k names with several targets per image)."""
        def name(t: int) -> str:
            return self.class_names[t] if t < len(self.class_names) else str(t)

        return [name(t) if np.ndim(t) == 0 else [name(c) for c in t] for t in self.targets.tolist()]


def rescaled_cams(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's heatmap of CAMs [..., h, w]: rectified, scaled, resized to size (H, W) with cv2,
    scaled again."""
    return _min_max(_resized(raw, size))


def _resized_cam(found: Map) -> np.ndarray:
    """A CAM `raw` at layer resolution, rectified, scaled and resized to its heatmap's size with cv2."""
    return _resized(found.raw, found.heatmap.shape[-2:]).reshape(found.heatmap.shape)


def _resized(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    maps = raw.reshape(-1, *raw.shape[-2:])
    resized = [cv2.resize(_min_max(np.maximum(m, 0)), (width, height)) for m in maps]
    return np.stack(resized).reshape(*raw.shape[:-2], height, width)


def _min_max(maps: np.ndarray) -> np.ndarray:
    """Min-max scaling of the last two axes to [0, 1], with pytorch-grad-cam's 1e-7 guard."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    return ((maps - low) / ((maps - low).max(axis=(-2, -1), keepdims=True) + 1e-7)).astype(np.float32)
