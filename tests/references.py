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


def layer_activation_and_gradient(model, layer: str, images: np.ndarray, targets: np.ndarray):
    """(A, dy/dA) at the layer as numpy arrays, captured with hooks as pytorch-grad-cam does."""
    store: dict = {}
    x = torch.from_numpy(images)
    with _capture(dict(model.named_modules())[layer], store), torch.enable_grad():
        logits = model(x)
        logits.gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    return store["act"].detach().numpy(), store["grad"].numpy()


def grad_cam_class(method: str):
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
            "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}[method]


def cam_family_raw(method: str, model, layer: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ReLU of pytorch-grad-cam's own map (its get_cam_image, weights included) on hook-captured A and G."""
    act, grad = layer_activation_and_gradient(model, layer, images, targets)
    module = dict(model.named_modules())[layer]
    cam = grad_cam_class(method)(model=model, target_layers=[module])
    try:
        return np.maximum(cam.get_cam_image(torch.from_numpy(images), module, None, act, grad, False), 0)
    finally:
        cam.activations_and_grads.release()


def cam_family_heatmap(method: str, model, layer: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The heatmap pytorch-grad-cam returns: rectified, scaled, resized with cv2, scaled."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with grad_cam_class(method)(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
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
