"""The exporter's errors name what was wrong and what exists; its metadata describes the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from onnx_explain.core.metadata import read_info
from onnx_explain.exporters import LayerNotFoundError, UnsupportedOpError, export_explainer


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


class _Odd(nn.Module):
    def forward(self, x):
        return torch.nextafter(x, x + 1)  # differentiable in torch, but no ONNX translation


class _Zeta(nn.Module):
    def forward(self, x):
        return torch.special.zeta(x.abs() + 1, torch.tensor(2.0))  # no derivative formula in torch


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act(self.act(self.conv(x))).mean((2, 3)))


def test_metadata_describes_the_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    info = export_explainer(_tiny(), path, input_shape=(3, 16, 16), layers=["3"], methods=["gradcam", "saliency"],
                            class_names=list("abcde"))
    read = read_info(onnx.load(str(path)), "tiny.onnx")
    assert read == info
    assert read.methods == ("gradcam", "saliency") and read.layers == {"3": (8, 8, 8)}
    assert read.class_names == tuple("abcde") and read.input_shape == (3, 16, 16) and read.opset >= 18
    outputs = {o.name for o in onnx.load(str(path)).graph.output}
    assert outputs == {"logits", "explained_targets", "saliency.raw", "saliency.heatmap", "gradcam@3.raw",
                       "gradcam@3.heatmap", "activation@3", "gradient@3"}
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["images", "targets", "counterfactual"]


def test_cam_needs_a_pooled_linear_head(tmp_path):
    torch.manual_seed(0)
    flat_head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    with pytest.raises(ValueError, match="global average pooling then one linear layer between layer '1'"):
        export_explainer(flat_head, tmp_path / "f.onnx", input_shape=(3, 8, 8), layers=["1"], methods=["cam"])
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ValueError, match="has no nn.Linear"):
        export_explainer(no_linear, tmp_path / "n.onnx", input_shape=(3, 8, 8), layers=["0"], methods=["cam"])


def test_all_conv_taps_every_convolution(tmp_path):
    info = export_explainer(_tiny(), tmp_path / "a.onnx", input_shape=(3, 16, 16), layers="all-conv",
                            methods=["gradcam"])
    assert info.layers == {"0": (8, 16, 16), "3": (8, 8, 8)}
    with pytest.raises(LayerNotFoundError, match="no nn.Conv2d"):
        export_explainer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), tmp_path / "b.onnx", input_shape=(3, 2, 2),
                         layers="all-conv", methods=["gradcam"])


def test_model_is_left_as_it_was(tmp_path):
    model = _tiny().train()
    export_explainer(model, tmp_path / "t.onnx", input_shape=(3, 16, 16), methods=["saliency"])
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_unknown_layer_lists_candidates(tmp_path):
    import torchvision

    with pytest.raises(LayerNotFoundError, match=r"'layer40' is not a module of .*did you mean 'layer4.0', 'layer4'"):
        export_explainer(torchvision.models.resnet18(), tmp_path / "r.onnx", input_shape=(3, 32, 32),
                         layers=["layer40"], methods=["gradcam"])


def test_shared_layer_is_refused(tmp_path):
    with pytest.raises(LayerNotFoundError, match="runs 2 times per forward pass"):
        export_explainer(_Shared(), tmp_path / "s.onnx", input_shape=(3, 8, 8), layers=["act"], methods=["gradcam"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown methods \['lime'\]; available: \['cam', 'deconvnet'"):
        export_explainer(_tiny(), tmp_path / "t.onnx", input_shape=(3, 16, 16), methods=["lime"])
    with pytest.raises(ValueError, match=r"need layers=\[...\]"):
        export_explainer(_tiny(), tmp_path / "t.onnx", input_shape=(3, 16, 16), methods=["gradcam"])
    with pytest.raises(ValueError, match=r"input_shape must be \[C, H, W\]"):
        export_explainer(_tiny(), tmp_path / "t.onnx", input_shape=(16, 16), methods=["saliency"])
    with pytest.raises(ValueError, match="class_names has 2 names but the model has 5 outputs"):
        export_explainer(_tiny(), tmp_path / "t.onnx", input_shape=(3, 16, 16), methods=["saliency"],
                         class_names=["a", "b"])
    with pytest.raises(LayerNotFoundError, match=r"\(Linear\) outputs \(1, 5\); CAM methods need"):
        export_explainer(_tiny(), tmp_path / "t.onnx", input_shape=(3, 16, 16), layers=["7"], methods=["gradcam"])


def _with(block: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def test_op_without_onnx_translation_is_named_with_its_module(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"no ONNX translation for aten.nextafter.default "
                                                 r"\(from module '1' \(_Odd\)\)"):
        export_explainer(_with(_Odd()), tmp_path / "o.onnx", input_shape=(3, 8, 8), methods=["saliency"])


def test_op_without_derivative_is_named_with_its_module(tmp_path):
    with pytest.raises(UnsupportedOpError, match=r"aten.special_zeta \(from module '1' \(_Zeta\)\) cannot be "
                                                 r"differentiated"):
        export_explainer(_with(_Zeta()), tmp_path / "z.onnx", input_shape=(3, 8, 8), methods=["saliency"])


def test_validation_spares_one_image_but_not_a_wrong_graph():
    from onnx_explain.exporters.validate import agreement_problem

    want = np.ones((8, 5), np.float32)
    one_off, two_off, all_moved = want.copy(), want.copy(), want * 1.001
    one_off[3] += 0.5
    two_off[:2] += 0.5
    assert agreement_problem("m", one_off, want, spare=1) is None
    assert "max error 5.00e-01" in agreement_problem("m", one_off, want)
    assert agreement_problem("m", two_off, want, spare=1) is not None
    assert "0% of images within" in agreement_problem("m", all_moved, want, spare=1)


def test_validation_of_averaged_maps_allows_kinks_in_every_image_but_not_a_wrong_weight():
    from onnx_explain.exporters.validate import agreement_problem

    want = np.ones((8, 5), np.float32)
    each_moved_a_little = want * (1 + 2e-3)  # a few of 32 path steps moved at a kink, in every image
    one_step_weight_wrong = want * (1 + 1 / 32)
    assert agreement_problem("m", each_moved_a_little, want, spare=1) is not None
    assert agreement_problem("m", each_moved_a_little, want, spare=1, evaluations=32) is None
    assert "0% of images within 8.8e-03" in agreement_problem("m", one_step_weight_wrong, want, spare=1,
                                                               evaluations=32)
