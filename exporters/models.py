"""Models the command line can export by name: the shipped ShapeNet, torchvision classifiers, saved modules."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# The last feature map of each torchvision family, the usual Grad-CAM layer.
_TORCHVISION_LAYERS = {"resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "vgg": "features",
                       "mobilenet": "features", "densenet": "features", "efficientnet": "features",
                       "squeezenet": "features", "convnext": "features", "regnet": "trunk_output"}


def load_model(spec: str) -> tuple[nn.Module, tuple[int, int, int], list[str], list[str] | None]:
    """(model, input shape, default CAM layers, class names) for 'shapenet', a torchvision model name
    (random weights: nothing is downloaded) or a file written by torch.save(model)."""
    if spec == "shapenet":
        from onnx_explain.models.shapenet import INPUT_SHAPE, TARGET_LAYER, load_shapenet
        from onnx_explain.models.shapes import CLASSES

        return load_shapenet(), INPUT_SHAPE, [TARGET_LAYER], list(CLASSES)
    path = Path(spec)
    if path.suffix in (".pt", ".pth") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no saved model at {path}")
        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # pickle, zipfile and torch each raise their own types for a foreign file
            raise ValueError(f"{path} is not a file written by torch.save(model): {str(e).splitlines()[0]}") from e
        if not isinstance(model, nn.Module):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a module saved with torch.save(model) "
                             "(a state_dict needs its model class: export it from Python)")
        return model, (3, 224, 224), [], None
    try:
        import torchvision
    except ImportError as e:
        raise ImportError("exporting a torchvision model by name needs torchvision (pip install torchvision)") from e
    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        raise ValueError(f"unknown model {spec!r}: expected 'shapenet', a saved module file, or a torchvision "
                         "classifier name such as resnet18, vgg11_bn or mobilenet_v2")
    model = torchvision.models.get_model(spec, weights=None)
    layer = default_layer(spec)
    if token_grid(model):  # a vision transformer: the last block's first norm, as pytorch-grad-cam
        layer = f"encoder.layers.encoder_layer_{len(model.encoder.layers) - 1}.ln_1"
    return model, (3, 224, 224), [layer] if layer else [], None


def token_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid of a torchvision vision transformer (its tokens after the class token), else None."""
    size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
    if type(model).__name__ != "VisionTransformer" or not size or not patch:
        return None
    return size // patch, size // patch


def default_layer(name: str) -> str | None:
    """The usual Grad-CAM layer of a torchvision model (by name), or None when the family is unknown."""
    return next((v for k, v in _TORCHVISION_LAYERS.items() if name.startswith(k)), None)
