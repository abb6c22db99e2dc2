"""The explanation methods as graph heads: torch functions traced into the ONNX graph.

A method reads one gradient (of the target score, through a backward pass with its ReLU rule) either at
the input or at a layer, and turns it into `raw` (the method's own quantity) and `heatmap` (float32
[N, H, W] in [0, 1] at input resolution).  Adding a method is one registered function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from exporters.rules import RULES

EPS = 1e-7  # the same stabiliser pytorch-grad-cam's scale_cam_image uses


@dataclass(frozen=True)
class Method:
    """name: as used in methods=[...]; at: "input" or "layer" (where the gradient is read);
    rule: the ReLU rule of the backward pass; head: (x, grad, size) -> (raw, heatmap), where x is the
    images [N, C, H, W] for input methods and the layer's activation for layer methods."""

    name: str
    at: str
    rule: str
    head: Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]]


METHODS: dict[str, Method] = {}


def method(name: str, *, at: str, rule: str) -> Callable:
    assert at in ("input", "layer") and rule in RULES
    assert name not in METHODS, f"method {name!r} registered twice"

    def wrap(head: Callable) -> Callable:
        METHODS[name] = Method(name, at, rule, head)
        return head

    return wrap


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of [N, H, W] maps to [0, 1]; a flat map becomes all zeros, not NaN."""
    lo = maps.amin(dim=(1, 2), keepdim=True)
    shifted = maps - lo
    return shifted / (shifted.amax(dim=(1, 2), keepdim=True) + EPS)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear [N, h, w] -> [N, H, W] with half-pixel centres, as cv2.resize and F.interpolate do.

    Written as R_h @ maps @ R_w^T: make_fx always decomposes F.interpolate into index gathers, which
    cost ONNX Runtime more than the whole Grad-CAM head; two small MatMuls with folded constants do not.
    """
    (h, w), (out_h, out_w) = maps.shape[1:], size
    return _bilinear_matrix(out_h, h, maps.dtype) @ maps @ _bilinear_matrix(out_w, w, maps.dtype).t()


def _bilinear_matrix(out: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """[out, size]: row i interpolates between the two source pixels around (i + 0.5) * size / out - 0.5
    (clamped at the edges as torch does), built from arange so that it survives export as constants."""
    src = ((torch.arange(out, dtype=dtype) + 0.5) * (size / out) - 0.5).clamp(min=0)
    low = src.floor()
    frac = (src - low)[:, None]
    high = (low + 1).clamp(max=size - 1)
    j = torch.arange(size, dtype=dtype)[None, :]
    return (j == low[:, None]).to(dtype) * (1 - frac) + (j == high[:, None]).to(dtype) * frac


def _input_gradient_map(images: torch.Tensor, grad: torch.Tensor, size: tuple[int, int]):
    # Simonyan et al. reduce the channels by the max of the absolute gradient.
    return grad, normalize(grad.abs().amax(dim=1))


method("saliency", at="input", rule="plain")(_input_gradient_map)
method("guided_backprop", at="input", rule="guided")(_input_gradient_map)


@method("gradcam", at="layer", rule="plain")
def gradcam(activation: torch.Tensor, grad: torch.Tensor, size: tuple[int, int]):
    """Selvaraju et al.: w_k = mean_ij dy/dA_k, map = ReLU(sum_k w_k A_k)."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1))
    # pytorch-grad-cam scales at layer resolution, resizes, then scales again; the same steps keep parity.
    return cam, normalize(upsample(normalize(cam), size))
