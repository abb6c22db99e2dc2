"""Shared fixtures: each model is exported once per test run and reused by every test that needs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnx_explain.exporters import METHODS, RELEVANCE_FAMILY

SIZE = 64  # small inputs keep the suite fast; every tested architecture still downsamples to >= 2x2
PARITY_MODELS = ["resnet18", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0",
                 "convnext_tiny", "squeezenet1_1"]
# cam needs global average pooling then one linear layer after the CAM layer; these heads differ (an MLP,
# a LayerNorm, a 1x1 convolution), and exporting cam for them is refused (tests/export/test_export_errors.py).
NO_POOLED_LINEAR_HEAD = {"vgg11", "vgg11_bn", "mobilenet_v3_small", "convnext_tiny", "squeezenet1_1"}


# The relevance and sampled methods (lrp_epsilon, deeplift, integrated gradients, the SmoothGrad family)
# are tested on these: captum's LRP and DeepLift have rules for their layers (resnet18 through a copy with
# its residual adds as modules and its shared ReLUs split, tests/references.py), and every sampled method
# multiplies the graph's batch, so a few models keep the suite fast.
RELEVANCE_MODELS = {"shapenet", "vgg11_bn", "resnet18"}
EXTRA_METHODS = {"vgg11": {"lrp_epsilon"}}  # captum LRP parity on plain vgg11 (tests/export/test_architectures.py)
IG_STEPS, NOISE_SAMPLES = 8, 4  # export settings of the tests' files (the defaults are 32 and 16)


def not_tested(model: str, method: str) -> str | None:
    """Why a (model, method) pair is not in the parity matrix, or None when it is."""
    if method == "cam" and model in NO_POOLED_LINEAR_HEAD:
        return (f"cam needs global average pooling then one linear layer after the CAM layer; {model}'s head "
                "differs, and its export is refused (tests/export/test_export_errors.py)")
    if method in RELEVANCE_FAMILY and model not in RELEVANCE_MODELS and method not in EXTRA_METHODS.get(model, ()):
        return ("the relevance and sampled methods are tested on shapenet, vgg11_bn and resnet18: captum has rules "
                "for their layers, and sampling multiplies the batch")
    return None


def methods_for(model: str) -> list[str]:
    """Every registered method the model is tested with."""
    return sorted(m for m in METHODS if not_tested(model, m) is None)


def model_method_pairs(models: list[str], methods: list[str] | None = None) -> list:
    """(model, method) parameters over every registered method; the pairs not tested are skipped with why."""
    return [pytest.param(model, method, marks=pytest.mark.skip(reason=why)) if (why := not_tested(model, method))
            else (model, method) for model in models for method in methods or sorted(METHODS)]


def make_model(name: str) -> torch.nn.Module:
    """A seeded, randomly initialised model in eval mode (nothing is downloaded)."""
    if name == "shapenet":
        from onnx_explain.models.shapenet import load_shapenet

        return load_shapenet()
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    _randomize_batchnorm(model)
    return model


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    # Fresh BN statistics (mean 0, var 1) make eval-mode BN an identity; random ones exercise the fold.
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


class Exported:
    """An exported model, its torch original, and an Explainer over the file.

    The export skips its own validation (torch against ONNX Runtime on random inputs, about a third of
    each export's time): tests/export/test_parity.py compares every (model x method) of these files with its
    reference, which is stricter, and validation itself is tested on the files of test_architectures.py,
    test_vit.py, test_explainer.py and test_export_errors.py.
    """

    def __init__(self, name: str, directory) -> None:
        from onnx_explain import Explainer
        from onnx_explain.exporters import export_explainer
        from onnx_explain.exporters.models import default_layer
        from onnx_explain.models.shapenet import TARGET_LAYER
        from onnx_explain.models.shapes import CLASSES

        self.name, self.model = name, make_model(name)
        shipped = name == "shapenet"
        self.layer = TARGET_LAYER if shipped else default_layer(name)
        classes = list(CLASSES) if shipped else None
        self.path = directory / f"{name}.onnx"
        self.info = export_explainer(self.model, self.path, input_shape=(3, SIZE, SIZE), layers=[self.layer],
                                     methods=methods_for(name), class_names=classes, ig_steps=IG_STEPS,
                                     noise_samples=NOISE_SAMPLES, validate_export=False)
        self.explainer = Explainer(self.path, providers="cpu")  # ONNX Runtime's default optimisation level


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name) -> Exported, built on first use and cached for the session."""
    cache: dict[str, Exported] = {}
    directory = tmp_path_factory.mktemp("exported")

    def get(name: str) -> Exported:
        if name not in cache:
            cache[name] = Exported(name, directory)
        return cache[name]

    return get


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)

