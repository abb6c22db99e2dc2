"""Reference maps computed with the libraries users trust (captum, pytorch-grad-cam) or torch autograd."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def saliency(model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """captum Saliency, signed (abs=False): d logit[target] / d images."""
    from captum.attr import Saliency

    x = torch.from_numpy(images).requires_grad_(True)
    return Saliency(model).attribute(x, target=torch.from_numpy(targets), abs=False).detach().numpy()


def gradient_x_input(model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """captum InputXGradient."""
    from captum.attr import InputXGradient

    x = torch.from_numpy(images).requires_grad_(True)
    return InputXGradient(model).attribute(x, target=torch.from_numpy(targets)).detach().numpy()


def relu_rule_captum(rule: str, model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """captum GuidedBackprop or Deconvolution: they rule nn.ReLU modules only (functional ReLUs stay plain)."""
    from captum.attr import Deconvolution, GuidedBackprop

    x = torch.from_numpy(images).requires_grad_(True)
    explainer = {"guided": GuidedBackprop, "deconvnet": Deconvolution}[rule](model)
    return explainer.attribute(x, target=torch.from_numpy(targets)).detach().numpy()


class _RuledReLU(torch.autograd.Function):
    """ReLU with the guided (Springenberg et al.) or deconvnet (Zeiler & Fergus) backward rule."""

    @staticmethod
    def forward(x, rule):
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.rule = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        grad = grad.clamp(min=0)
        return (grad if ctx.rule == "deconvnet" else grad * (out > 0).to(grad.dtype)), None


class _RuleEveryReLU(TorchFunctionMode):
    """Routes every ReLU call, module or functional, in-place or not, through _RuledReLU."""

    _RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._RELUS:
            return _RuledReLU.apply(args[0], self.rule)
        return func(*args, **(kwargs or {}))


def relu_rule_every_relu(rule: str, model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The guided or deconvnet input gradient with the rule applied at every ReLU call site: the reference
    for models whose forward calls F.relu (densenet), where captum leaves some ReLUs unruled."""
    x = torch.from_numpy(images).requires_grad_(True)
    with _RuleEveryReLU(rule):
        logits = model(x)
    score = logits.gather(1, torch.from_numpy(targets)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad.numpy()


@contextlib.contextmanager
def _capture(module: torch.nn.Module, store: dict, grads: bool = True):
    """The layer's output tensor and the gradient with respect to it, as pytorch-grad-cam takes them: a
    tensor hook registered at forward time sees d score / d output even if the model later modifies the
    output in place (torchvision densenet applies F.relu in place to `features`), while the stored
    tensor shows the values as the model left them."""

    def hook(_m, _i, out):
        store["act"] = out
        if grads:
            out.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def layer_output(model, layer: str, images: np.ndarray) -> torch.Tensor:
    """The layer's output on the images, without gradients (a copy, so later in-place ops cannot touch it)."""
    store: dict = {}
    with _capture(dict(model.named_modules())[layer], store, grads=False), torch.no_grad():
        model(torch.from_numpy(images))
    return store["act"].clone()


def layer_activation_and_gradient(model, layer: str, images: np.ndarray, targets: np.ndarray, reshape=None):
    """(A, dy/dA) at the layer as numpy arrays, captured with hooks as pytorch-grad-cam does (and passed
    through its reshape_transform, if given)."""
    store: dict = {}
    x = torch.from_numpy(images)
    with _capture(dict(model.named_modules())[layer], store), torch.enable_grad():
        logits = model(x)
        logits.gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    reshape = reshape or (lambda t: t)
    return reshape(store["act"].detach()).numpy(), reshape(store["grad"]).numpy()


def vit_reshape(height: int, width: int):
    """pytorch-grad-cam's reshape_transform for vision transformers (its documented example): the class
    token dropped, the rest laid out as a [N, C, height, width] grid."""
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, 1:, :].reshape(tokens.size(0), height, width, tokens.size(2))
        return grid.transpose(2, 3).transpose(1, 2)

    return reshape


def grad_cam_class(method: str):
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
            "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}[method]


def cam_family_raw(method: str, model, layer: str, images: np.ndarray, targets: np.ndarray,
                   reshape=None) -> np.ndarray:
    """ReLU of pytorch-grad-cam's own map (its get_cam_image, weights included) on hook-captured A and G."""
    act, grad = layer_activation_and_gradient(model, layer, images, targets, reshape)
    module = dict(model.named_modules())[layer]
    cam = grad_cam_class(method)(model=model, target_layers=[module], reshape_transform=reshape)
    try:
        return np.maximum(cam.get_cam_image(torch.from_numpy(images), module, None, act, grad, False), 0)
    finally:
        cam.activations_and_grads.release()


def cam_family_heatmap(method: str, model, layer: str, images: np.ndarray, targets: np.ndarray,
                       reshape=None) -> np.ndarray:
    """The heatmap pytorch-grad-cam returns: rectified, scaled, resized with cv2, scaled."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    with grad_cam_class(method)(model=model, target_layers=[module], reshape_transform=reshape) as cam:
        return cam(torch.from_numpy(images), targets=[ClassifierOutputTarget(int(t)) for t in targets])


def class_activation_map(model, layer: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Zhou et al.'s CAM from hooks, rectified: sum_k w_k^c A_k with the last linear layer's weights."""
    act, _ = layer_activation_and_gradient(model, layer, images, targets)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    weights = linear.weight.detach().numpy()[targets]
    return np.maximum(np.einsum("nk,nkhw->nhw", weights, act), 0)


def exact_cam_heatmap(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's scale, resize, scale, with an exact bilinear resize instead of cv2's fixed point."""
    def scale(m: torch.Tensor) -> torch.Tensor:
        low = m.amin(dim=(-2, -1), keepdim=True)
        return (m - low) / ((m - low).amax(dim=(-2, -1), keepdim=True) + 1e-7)

    up = F.interpolate(scale(torch.from_numpy(raw))[:, None], size=size, mode="bilinear", align_corners=False)
    return scale(up[:, 0]).numpy()


def feature_gradient(rule: str, model, layer: str, score: str, images: np.ndarray,
                     channels: np.ndarray) -> np.ndarray:
    """d (max or sum of channel c's activation at the layer) / d images, with the ReLU rule at every
    ReLU call ("plain": autograd's own); torch's max(dim) sends the gradient to the first maximum."""
    store: dict = {}
    x = torch.from_numpy(images).requires_grad_(True)
    with _capture(dict(model.named_modules())[layer], store, grads=False):
        with _RuleEveryReLU(rule) if rule != "plain" else contextlib.nullcontext():
            model(x)
    plane = store["act"][torch.arange(len(images)), torch.from_numpy(channels)].flatten(1)
    total = plane.max(dim=1).values.sum() if score == "max" else plane.sum()
    (grad,) = torch.autograd.grad(total, x)
    return grad.numpy()


# The relevance and sampled methods, by captum.

def captum_ready(model: torch.nn.Module) -> torch.nn.Module:
    """A copy captum's LRP and DeepLift can walk: ReLUs not in place (module backward hooks refuse them)
    and, in torchvision's residual blocks, each ReLU call its own module and the residual add a module
    (captum's Addition_Module), so that LRP can put a rule on it."""
    import copy
    import types

    from captum.attr._utils.custom_modules import Addition_Module
    from torchvision.models.resnet import BasicBlock

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
        if isinstance(m, BasicBlock):
            m.relu_out, m.add = torch.nn.ReLU(), Addition_Module()
            m.forward = types.MethodType(_basic_block_forward, m)
    return model


def _basic_block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu_out(self.add(out, identity))


def lrp_epsilon(model, images: np.ndarray, targets: np.ndarray, epsilon: float = 1e-9) -> np.ndarray:
    """captum LRP with the epsilon rule on every layer captum rules, and on the residual adds."""
    from captum.attr import LRP
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES
    from captum.attr._utils.custom_modules import Addition_Module
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = captum_ready(model)
    for m in model.modules():
        if type(m) in SUPPORTED_LAYERS_WITH_RULES or isinstance(m, Addition_Module):
            m.rule = EpsilonRule(epsilon=epsilon)
    x = torch.from_numpy(images).requires_grad_(True)
    return LRP(model).attribute(x, target=torch.from_numpy(targets)).detach().numpy()


def deeplift(model, images: np.ndarray, targets: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """captum DeepLift (rescale rule), on a copy whose ReLU modules are each used once."""
    import warnings

    from captum.attr import DeepLift

    x = torch.from_numpy(images).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it sets hooks
        attr = DeepLift(captum_ready(model)).attribute(x, baselines=torch.from_numpy(baselines).expand_as(x),
                                                       target=torch.from_numpy(targets))
    return attr.detach().numpy()


def integrated_gradients(model, images: np.ndarray, targets: np.ndarray, baselines: np.ndarray, steps: int,
                         method: str) -> np.ndarray:
    """captum IntegratedGradients."""
    from captum.attr import IntegratedGradients

    x = torch.from_numpy(images).requires_grad_(True)
    attr = IntegratedGradients(model).attribute(x, baselines=torch.from_numpy(baselines).expand_as(x),
                                                target=torch.from_numpy(targets), n_steps=steps, method=method)
    return attr.detach().numpy()


def noise_tunnel(kind: str, base: str, model, images: np.ndarray, targets: np.ndarray, samples: int,
                 noise_std: float, seed: int = 0, **ig) -> np.ndarray:
    """captum NoiseTunnel over Saliency (signed), GuidedBackprop or IntegratedGradients, handed the noise
    the graph draws from `seed` (onnx_explain.exporters.sampling.standard_normal) in place of torch.normal's."""
    from unittest import mock

    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

    from onnx_explain.exporters.sampling import standard_normal

    n, *shape = images.shape
    noise = standard_normal(torch.tensor(seed), (samples, *shape)).expand(n, samples, *shape).flatten(0, 1)
    explainer = {"saliency": Saliency, "guided_backprop": GuidedBackprop,
                 "integrated_gradients": IntegratedGradients}[base](model)
    options = {"abs": False} if base == "saliency" else {}
    if base == "integrated_gradients":
        options = {"baselines": torch.from_numpy(ig["baselines"]).expand(n, *shape),
                   "n_steps": ig["steps"], "method": ig["method"]}
    x = torch.from_numpy(images).requires_grad_(True)
    with mock.patch.object(torch, "normal", lambda mean, std: mean + std * noise):
        attr = NoiseTunnel(explainer).attribute(x, nt_type=kind, nt_samples=samples, stdevs=noise_std,
                                                target=torch.from_numpy(targets), **options)
    return attr.detach().numpy()


class _SecantReLU(torch.autograd.Function):
    """ReLU on the batch [images; baselines]; backward: DeepLIFT's rescale multiplier, the same for both
    halves (captum's convention), the plain gradient where the input barely changes."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        x, ref = t.chunk(2)
        delta = x - ref
        slope = (x.clamp(min=0) - ref.clamp(min=0)) / torch.where(delta.abs() < 1e-10, 1.0, delta)
        plain = (t > 0).to(t.dtype)
        return grad * torch.where(torch.cat([delta, delta]).abs() < 1e-10, plain, torch.cat([slope, slope]))


class _SecantMaxPool(torch.autograd.Function):
    """MaxPool2d on [images; baselines]; backward: each window's output change, split at the larger of the
    two maxima, scatter-added to the image's and the baseline's argmax, divided by the input change."""

    @staticmethod
    def forward(ctx, t, pool):
        out, idx = F.max_pool2d(t, *pool, return_indices=True)
        ctx.save_for_backward(t, out, idx)
        return out

    @staticmethod
    def backward(ctx, grad):
        t, out, idx = ctx.saved_tensors
        (x, ref), (o, o_ref), (i, i_ref), (g, _) = t.chunk(2), out.chunk(2), idx.chunk(2), grad.chunk(2)
        top = torch.maximum(o, o_ref)
        spread = _unpool_add(g * (top - o_ref), i, x) + _unpool_add(g * (o - top), i_ref, x)
        delta = x - ref
        small = delta.abs() < 1e-10
        result = torch.where(small, _unpool_add(g, i, x), spread / torch.where(small, 1.0, delta))
        return torch.cat([result, result]), None


def _unpool_add(values, indices, like):
    """Scatter-add each window's value to its argmax (F.max_unpool2d assigns, dropping shared maxima)."""
    flat = torch.zeros_like(like).flatten(2)
    return flat.scatter_add(2, indices.flatten(2), values.flatten(2)).reshape(like.shape)


def replaced(model: torch.nn.Module, kinds, make) -> torch.nn.Module:
    """The model with every module of the given kinds replaced by make(module), in place."""
    for name, m in list(model.named_modules()):
        if isinstance(m, kinds):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, make(m))
    return model


class _Secant(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, t):
        if isinstance(self.module, torch.nn.ReLU):
            return _SecantReLU.apply(t)
        m = self.module
        return _SecantMaxPool.apply(t, (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode))


def deeplift_secant(model, images: np.ndarray, targets: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """DeepLIFT's rescale rule written out in eager torch, captum's way (images and baselines as one
    batch, every ReLU and max pool module replaced), with the max-pool rule as DeepLIFT defines it.
    captum's own DeepLift misroutes max pools: measured here, its attributions miss the logit change by
    up to half on a conv-ReLU-maxpool net with a non-zero baseline (captum #1276, and its unpool assigns
    where overlapping windows share a maximum).  tests/export/test_relevance.py checks this reference against
    captum on models without max pools, where captum's rules hold."""
    model = replaced(captum_ready(model), (torch.nn.ReLU, torch.nn.MaxPool2d), _Secant)
    x = torch.from_numpy(images).requires_grad_(True)
    ref = torch.from_numpy(baselines).expand_as(x)
    out = model(torch.cat([x, ref]))
    t = torch.from_numpy(targets)
    total = out[: len(x)].gather(1, t[:, None]).sum() + out[len(x):].gather(1, t[:, None]).sum()
    (grad,) = torch.autograd.grad(total, x)
    return ((x - ref) * grad).detach().numpy()
