"""Export validation knows float32's own error: an ill-conditioned model whose float32 results move in
any runtime exports, a graph that is wrong still fails, and maps that are zero to rounding export with a
warning."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnx_explain.exporters.export as export_module
from onnx_explain.exporters import ExportValidationError, export_explainer

METHODS = ["saliency", "gradient_x_input", "gradcam"]


class Cancelling(nn.Module):
    """Two heads whose weights differ by 1e-6 of their size, subtracted: the logits and every gradient
    cancel catastrophically, so float32 moves them by percents in torch and ONNX Runtime alike."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                      nn.ReLU())
        self.a = nn.Linear(16, 4)
        self.b = copy.deepcopy(self.a)
        with torch.no_grad():
            self.a.weight.mul_(1e3)
            self.b.weight.copy_(self.a.weight + 1e-3 * torch.randn_like(self.a.weight))

    def forward(self, x):
        f = self.features(x).mean(dim=(2, 3))
        return self.a(f) - self.b(f)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def test_ill_conditioned_model_exports(tmp_path):
    torch.manual_seed(0)
    export_explainer(Cancelling().eval(), tmp_path / "cancelling.onnx", input_shape=(3, 16, 16),
                     layers=["features"], methods=METHODS)


def test_a_wrong_graph_still_fails_against_float64(tmp_path, monkeypatch):
    to_onnx = export_module._to_onnx

    def perturbed(traced, counterfactual):  # one weight 1% off: every image's logits and maps move
        proto = to_onnx(traced, counterfactual)
        weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.01, weight.name))
        return proto

    monkeypatch.setattr(export_module, "_to_onnx", perturbed)
    torch.manual_seed(0)
    with pytest.raises(ExportValidationError, match="against torch in float64, image"):
        export_explainer(small_net(), tmp_path / "wrong.onnx", input_shape=(3, 16, 16), methods=["saliency"])


def test_maps_zero_to_rounding_export_with_a_warning(tmp_path, monkeypatch):
    import onnx_explain.exporters.validate as validate

    # Zero maps: a ReLU whose input is negative everywhere makes the target's gradient exactly 0 in
    # float64, while the float32 check is made to fail so the float64 stage decides.
    net = small_net()
    with torch.no_grad():
        net[0].bias.fill_(-1e3)
    monkeypatch.setattr(validate, "RTOL", -1.0)
    with pytest.warns(UserWarning, match="zero to float32 rounding"):
        export_explainer(net, tmp_path / "zero.onnx", input_shape=(3, 16, 16), methods=["saliency"])
