"""The explanation methods as graph heads: torch functions traced into the ONNX graph.

A method reads the gradient of the target score at the input, at a tapped layer, or both, each from a
backward pass with the ReLU rule the method names, and turns them into `raw` (the method's own quantity)
and `heatmap` (float32 [N, H, W] in [0, 1] at input resolution).  Adding a method is one registered
function here, one row in the parity tests and one row in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from onnx_explain.exporters.rules import RULES

EPS = 1e-7  # the same stabiliser pytorch-grad-cam's scale_cam_image uses
CLASSIFIER = "classifier"  # a layer "rule": the classifier's weights of the target class instead of a gradient


@dataclass(frozen=True)
class HeadInputs:
    """What a head reads.  images [N, C, H, W]; input_grad: d score / d images through the method's
    input rule; for layer methods, activation A [N, K, h, w] and layer_grad, d score / d A through the
    method's layer rule (sign-flipped for counterfactual maps), or the class weights [N, K, 1, 1] (cam).
    Sampled methods read samples [N, S, C, H, W], one attribution per noisy copy (the input gradient, or
    integrated gradients along the path from the baseline).  scores [N] and reference_scores [N] are the
    target's logit on the images and on the baseline [1, C, H, W], for the methods that report how far
    their attributions sum from the score change (the convergence delta)."""

    images: torch.Tensor
    input_grad: torch.Tensor | None = None
    activation: torch.Tensor | None = None
    layer_grad: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    baselines: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    reference_scores: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])


@dataclass(frozen=True)
class Sampler:
    """Where a sampled method takes its gradients: at noisy copies of the image (SmoothGrad), at points on
    the path from the baseline to the image (integrated gradients), or both (the path of each copy)."""

    noise: bool
    path: bool


@dataclass(frozen=True)
class Method:
    """name: as used in methods=[...]; at: "input" (one map) or "layer" (one map per tapped layer);
    input_rule / layer_rule: the rule of the backward pass whose gradient the head reads at the input /
    at the layer (None: not read); sampler: where the input gradients are taken (None: at the images);
    head: HeadInputs -> (raw, heatmap), or (raw, heatmap, delta) when `delta`."""

    name: str
    at: str
    input_rule: str | None
    layer_rule: str | None
    head: Callable[[HeadInputs], tuple[torch.Tensor, ...]]
    sampler: Sampler | None = None
    delta: bool = False

    @property
    def counterfactual(self) -> bool:
        """Whether counterfactual=True changes this map (it flips the gradient at the layer)."""
        return self.layer_rule is not None


METHODS: dict[str, Method] = {}


def method(name: str, *, at: str, input_rule: str | None = None, layer_rule: str | None = None,
           sampler: Sampler | None = None, delta: bool = False) -> Callable:
    """Register the decorated head as the exported method `name` (decorators stack: one head may serve
    several methods that differ only in their rules).

    Args:
        name: the method's name in methods=[...], as in its paper ("gradcam", "guided_backprop").
        at: "input" (one map, from the input gradient) or "layer" (one map per tapped layer).
        input_rule, layer_rule: the ReLU rule of the backward pass whose gradient the head reads at the
            input or at the layer (onnx_explain.exporters.rules.RULES, or CLASSIFIER at the layer for cam);
            None: that gradient is not read.
        sampler: where a sampled method takes its input gradients (noisy copies, the integration path).
        delta: the head also returns the convergence delta [N].

    Raises:
        ValueError: an unknown place, rule or sampler combination, or a name registered twice.
    """
    problems = []
    if at not in ("input", "layer"):
        problems.append(f"at must be 'input' or 'layer', got {at!r}")
    if at == "input" and layer_rule is not None:
        problems.append("an input method reads no layer gradient (layer_rule must be None)")
    if input_rule not in (None, *RULES) or layer_rule not in (None, CLASSIFIER, *RULES):
        problems.append(f"rules must be None or one of {RULES} (the layer also {CLASSIFIER!r}), "
                        f"got input_rule={input_rule!r}, layer_rule={layer_rule!r}")
    if sampler is not None and at != "input":
        problems.append("only input methods are sampled")
    if name in METHODS:
        problems.append("the name is registered twice")
    if problems:
        raise ValueError(f"cannot register method {name!r}: {'; '.join(problems)}")

    def register(head: Callable) -> Callable:
        METHODS[name] = Method(name, at, input_rule, layer_rule, head, sampler, delta)
        return head

    return register


def min_max(maps: torch.Tensor) -> torch.Tensor:
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


def cam_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's steps: scale at layer resolution, resize bilinearly, scale again."""
    return min_max(upsample(min_max(cam), size))


# Input methods: the map is the input gradient itself or a product with the image.

def _gradient_heatmap(raw: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. reduce the channels by the max of the absolute gradient."""
    return min_max(raw.abs().amax(dim=1))


@method("saliency", at="input", input_rule="plain")
@method("guided_backprop", at="input", input_rule="guided")
@method("deconvnet", at="input", input_rule="deconvnet")
def gradient_map(x: HeadInputs):
    """The input gradient through the method's ReLU rule (plain, guided or deconvnet)."""
    return x.input_grad, _gradient_heatmap(x.input_grad)


def _relevance_heatmap(raw: torch.Tensor) -> torch.Tensor:
    """|sum over channels| of an attribution that sums to the score (change), as captum shows it."""
    return min_max(raw.sum(dim=1).abs())


def _total(raw: torch.Tensor) -> torch.Tensor:
    return raw.sum(dim=(1, 2, 3))


@method("gradient_x_input", at="input", input_rule="plain")
def gradient_x_input(x: HeadInputs):
    """Shrikumar et al.: the input times its gradient."""
    raw = x.input_grad * x.images
    return raw, _relevance_heatmap(raw)


# The relevance family: attributions that add up to the score, or to its change from a baseline.  Each
# head also returns the convergence delta, captum's name for how far from that they add up.

@method("lrp_epsilon", at="input", input_rule="lrp", delta=True)
def lrp_epsilon(x: HeadInputs):
    """Bach et al., the epsilon rule (onnx_explain.exporters.relevance): the input times its LRP-modified
    gradient; the relevances sum to the target's logit."""
    raw = x.input_grad * x.images
    return raw, _relevance_heatmap(raw), _total(raw) - x.scores


@method("deeplift", at="input", input_rule="deeplift", delta=True)
def deeplift(x: HeadInputs):
    """Shrikumar et al., the rescale rule: the input's change from the baseline times its multipliers;
    they sum to the logit's change from the baseline."""
    raw = x.input_grad * (x.images - x.baselines)
    return raw, _relevance_heatmap(raw), _total(raw) - (x.scores - x.reference_scores)


@method("integrated_gradients", at="input", input_rule="plain", sampler=Sampler(noise=False, path=True), delta=True)
def integrated_gradients(x: HeadInputs):
    """Sundararajan et al.: (image - baseline) times the path integral of the gradient, by the export's
    integration rule; the delta is its error against the logit's change."""
    raw = x.samples[:, 0]
    return raw, _relevance_heatmap(raw), _total(raw) - (x.scores - x.reference_scores)


# SmoothGrad (Smilkov et al.) and its variants, as captum's NoiseTunnel: the mean of the attributions of
# noisy copies of the image (x.samples [N, S, ...]), the mean of their squares, or their variance
# (VarGrad, Adebayo et al.), over saliency, guided backprop or integrated gradients (ig_: each noisy
# copy's path integral).
NOISE = Sampler(noise=True, path=False)
NOISY_PATHS = Sampler(noise=True, path=True)


@method("smoothgrad", at="input", input_rule="plain", sampler=NOISE)
@method("guided_smoothgrad", at="input", input_rule="guided", sampler=NOISE)
def smoothgrad(x: HeadInputs):
    raw = x.samples.mean(dim=1)
    return raw, _gradient_heatmap(raw)


@method("smoothgrad_sq", at="input", input_rule="plain", sampler=NOISE)
@method("guided_smoothgrad_sq", at="input", input_rule="guided", sampler=NOISE)
def smoothgrad_sq(x: HeadInputs):
    raw = (x.samples * x.samples).mean(dim=1)
    return raw, _gradient_heatmap(raw)


@method("vargrad", at="input", input_rule="plain", sampler=NOISE)
@method("guided_vargrad", at="input", input_rule="guided", sampler=NOISE)
def vargrad(x: HeadInputs):
    raw = (x.samples * x.samples).mean(dim=1) - x.samples.mean(dim=1) ** 2
    return raw, _gradient_heatmap(raw)


@method("ig_smoothgrad", at="input", input_rule="plain", sampler=NOISY_PATHS)
def ig_smoothgrad(x: HeadInputs):
    raw = x.samples.mean(dim=1)
    return raw, _relevance_heatmap(raw)


@method("ig_smoothgrad_sq", at="input", input_rule="plain", sampler=NOISY_PATHS)
def ig_smoothgrad_sq(x: HeadInputs):
    raw = (x.samples * x.samples).mean(dim=1)
    return raw, _relevance_heatmap(raw)


@method("ig_vargrad", at="input", input_rule="plain", sampler=NOISY_PATHS)
def ig_vargrad(x: HeadInputs):
    raw = (x.samples * x.samples).mean(dim=1) - x.samples.mean(dim=1) ** 2
    return raw, _relevance_heatmap(raw)


# The CAM family: a combination of the activations A_k and the gradients G_k = d score / d A_k at a
# layer, rectified, then scaled and resized as pytorch-grad-cam does.  Each combination returns the map
# before the ReLU; the guided CAMs (Selvaraju et al.) mask guided backprop with a CAM's heatmap.

def _cam(combined: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = torch.relu(combined)
    return raw, cam_heatmap(raw, size)


def _guided(x: HeadInputs, combined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raw = x.input_grad * cam_heatmap(torch.relu(combined), x.size)[:, None]
    return raw, _gradient_heatmap(raw)


@method("cam", at="layer", layer_rule=CLASSIFIER)
def cam(x: HeadInputs):
    """Zhou et al.: sum_k w_k^c A_k with the classifier's weights of class c (no backward pass)."""
    return _cam((x.layer_grad * x.activation).sum(dim=1), x.size)


def grad_cam_map(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al.: w_k = mean_ij G_k, map = sum_k w_k A_k."""
    return (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)


def grad_cam_plus_plus_map(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Chattopadhay et al., closed form for the exponential score (pytorch-grad-cam's eq. 19):
    alpha = G^2 / (2 G^2 + sum_ij A * G^3), zero where G = 0; w_k = sum_ij alpha * ReLU(G)."""
    grad2 = grad * grad
    alpha = grad2 / (2 * grad2 + activation.sum(dim=(2, 3), keepdim=True) * grad2 * grad + 1e-6)
    alpha = alpha * (grad != 0).to(grad.dtype)
    weights = (alpha * torch.relu(grad)).sum(dim=(2, 3), keepdim=True)
    return (weights * activation).sum(dim=1)


@method("gradcam", at="layer", layer_rule="plain")
def gradcam(x: HeadInputs):
    return _cam(grad_cam_map(x.activation, x.layer_grad), x.size)


@method("gradcam++", at="layer", layer_rule="plain")
def gradcam_plus_plus(x: HeadInputs):
    return _cam(grad_cam_plus_plus_map(x.activation, x.layer_grad), x.size)


@method("xgradcam", at="layer", layer_rule="plain")
def xgradcam(x: HeadInputs):
    """Fu et al. (XGrad-CAM): w_k = sum_ij G_k A_k / (sum_ij A_k + eps)."""
    a, g = x.activation, x.layer_grad
    weights = (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + EPS)
    return _cam((weights * a).sum(dim=1), x.size)


@method("hirescam", at="layer", layer_rule="plain")
def hirescam(x: HeadInputs):
    """Draelos & Carin (HiResCAM): sum_k G_k * A_k, element-wise."""
    return _cam((x.layer_grad * x.activation).sum(dim=1), x.size)


@method("layercam", at="layer", layer_rule="plain")
def layercam(x: HeadInputs):
    """Jiang et al. (LayerCAM): sum_k ReLU(G_k) * A_k, element-wise."""
    return _cam((torch.relu(x.layer_grad) * x.activation).sum(dim=1), x.size)


@method("guided_gradcam", at="layer", input_rule="guided", layer_rule="plain")
def guided_gradcam(x: HeadInputs):
    return _guided(x, grad_cam_map(x.activation, x.layer_grad))


@method("guided_gradcam++", at="layer", input_rule="guided", layer_rule="plain")
def guided_gradcam_plus_plus(x: HeadInputs):
    return _guided(x, grad_cam_plus_plus_map(x.activation, x.layer_grad))


# The methods the relevance rules or sampling add; the rest, the gradient family, is the command line's
# default export: it works on every architecture and costs one backward pass per rule.
RELEVANCE_FAMILY = frozenset(m for m, method in METHODS.items()
                             if method.sampler or method.input_rule in ("lrp", "deeplift"))
GRADIENT_FAMILY = frozenset(METHODS) - RELEVANCE_FAMILY
