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


def guided_backprop_captum(model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """captum GuidedBackprop: rules nn.ReLU modules only (functional ReLUs stay plain)."""
    from captum.attr import GuidedBackprop

    x = torch.from_numpy(images).requires_grad_(True)
    return GuidedBackprop(model).attribute(x, target=torch.from_numpy(targets)).detach().numpy()


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


class _RuleEveryReLU(TorchFunctionMode):
    """Routes every ReLU call, module or functional, in-place or not, through _GuidedReLU."""

    _RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_backprop_every_relu(model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Guided backprop with the rule applied at every ReLU call site: the reference for models whose
    forward calls F.relu (densenet), where captum leaves some ReLUs unruled."""
    x = torch.from_numpy(images).requires_grad_(True)
    with _RuleEveryReLU():
        logits = model(x)
    score = logits.gather(1, torch.from_numpy(targets)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad.numpy()


@contextlib.contextmanager
def _capture(module: torch.nn.Module, store: dict):
    """The layer's output tensor and the gradient with respect to it, as pytorch-grad-cam takes them: a
    tensor hook registered at forward time sees d score / d output even if the model later modifies the
    output in place (torchvision densenet applies F.relu in place to `features`), while the stored
    tensor shows the values as the model left them."""

    def hook(_m, _i, out):
        store["act"] = out
        out.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def gradcam_raw(model, layer: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Grad-CAM from hooks: ReLU(sum_k mean_ij(dy/dA_k) A_k) at the layer's resolution."""
    store: dict = {}
    x = torch.from_numpy(images)
    with _capture(dict(model.named_modules())[layer], store), torch.enable_grad():
        logits = model(x)
        logits.gather(1, torch.from_numpy(targets)[:, None]).sum().backward()
    act, grad = store["act"].detach(), store["grad"]
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1)).numpy()


def gradcam_heatmap(model, layer: str, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam GradCAM: the normalised map resized to the input."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        return cam(torch.from_numpy(images), targets=[ClassifierOutputTarget(int(t)) for t in targets])
