"""Each decomposition against torch's own kernel, case by case, the ReLU rules, and a backward that
writes into a view in place (traced again functionalised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnx_explain import Explainer
from onnx_explain.exporters import export_explainer, rules
from onnx_explain.exporters.decompositions import REGISTRY, aten
from onnx_explain.exporters.errors import UnsupportedOpError

torch.manual_seed(0)


def _conv_case(n, c, h, w, out_c, k, stride, padding, dilation, groups):
    x = torch.randn(n, c, h, w)
    weight = torch.randn(out_c, c // groups, k, k)
    y = aten.convolution(x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)
    args = (torch.randn_like(y), x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0],
            groups, [True, False, False])
    return args, lambda out: out[0]


def _avg_pool_case(h, w, k, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    x = torch.randn(2, 3, h, w)
    y = aten.avg_pool2d(x, [k, k], [stride, stride], [padding, padding], ceil_mode, count_include_pad,
                        divisor_override)
    return (torch.randn_like(y), x, [k, k], [stride, stride], [padding, padding], ceil_mode, count_include_pad,
            divisor_override), None


def _adaptive_case(h, w, oh, ow):
    x = torch.randn(2, 3, h, w)
    return (torch.randn(2, 3, oh, ow), x), None


def _attention_inputs(heads, length, source, dim):
    return torch.randn(2, heads, length, dim), torch.randn(2, heads, source, dim), torch.randn(2, heads, source, dim)


def _attention_case(heads, length, source, dim, is_causal=False, mask=None, scale=None):
    q, k, v = _attention_inputs(heads, length, source, dim)
    out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
    return (torch.randn_like(out), q, k, v, out, lse, 0.0, is_causal), None, dict(attn_mask=mask, scale=scale)


def _attention_forward_case(heads, length, source, dim, is_causal=False, mask=None, scale=None):
    return (*_attention_inputs(heads, length, source, dim), 0.0, is_causal), None, dict(attn_mask=mask, scale=scale)


CASES = {
    aten.convolution_backward.default: {
        "3x3 same": _conv_case(2, 4, 9, 9, 6, 3, 1, 1, 1, 1),
        "stride 2, odd size": _conv_case(2, 4, 11, 10, 6, 3, 2, 1, 1, 1),
        "7x7 stride 2 pad 3": _conv_case(1, 3, 32, 32, 8, 7, 2, 3, 1, 1),
        "depthwise": _conv_case(2, 8, 9, 9, 8, 3, 2, 1, 1, 8),
        "depthwise stride 1": _conv_case(2, 8, 9, 9, 8, 3, 1, 1, 1, 8),
        "grouped, stride 1, more outputs": _conv_case(2, 4, 7, 7, 8, 5, 1, 2, 1, 2),
        "grouped, dilated": _conv_case(2, 4, 12, 12, 8, 3, 1, 2, 2, 2),
        "1x1": _conv_case(2, 4, 5, 5, 3, 1, 1, 0, 1, 1),
        "1x1 stride 2 (resnet downsample)": _conv_case(2, 4, 9, 8, 6, 1, 2, 0, 1, 1),
        "4x4 stride 2 pad 1": _conv_case(2, 3, 10, 9, 5, 4, 2, 1, 1, 1),
        "3x3 stride 3, no padding": _conv_case(2, 3, 11, 12, 4, 3, 3, 0, 1, 1),
        "5x5 stride 2 pad 4 (wide padding)": _conv_case(1, 2, 8, 8, 3, 5, 2, 4, 1, 1),
        "dilated stride 2 (transposed conv)": _conv_case(1, 2, 11, 11, 3, 3, 2, 2, 2, 1),
    },
    aten.avg_pool2d_backward.default: {
        "2x2 stride 2 (densenet)": _avg_pool_case(16, 16, 2, 2, 0, False, True),
        "3x3 pad 1 include pad": _avg_pool_case(9, 9, 3, 2, 1, False, True),
        "3x3 pad 1 exclude pad": _avg_pool_case(9, 9, 3, 2, 1, False, False),
        "ceil mode": _avg_pool_case(10, 11, 3, 2, 1, True, True),
        "ceil mode exclude pad": _avg_pool_case(10, 11, 3, 2, 0, True, False),
        "divisor override": _avg_pool_case(8, 8, 2, 2, 0, False, True, 3),
    },
    aten._adaptive_avg_pool2d.default: {
        "to 1x1": ((torch.randn(2, 3, 7, 7), [1, 1]), None),
        "uneven windows": ((torch.randn(2, 3, 10, 9), [4, 3]), None),
        "channels last": ((torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last), [2, 2]), None),
    },
    aten._adaptive_avg_pool2d_backward.default: {
        "to 1x1": _adaptive_case(7, 7, 1, 1),
        "to 1x1 from a non-square map": _adaptive_case(10, 9, 1, 1),
        "uneven windows": _adaptive_case(10, 9, 4, 3),
        "upsampling (vgg at small inputs)": _adaptive_case(2, 2, 7, 7),
    },
    aten._scaled_dot_product_flash_attention_for_cpu.default: {
        "self-attention (vit)": _attention_forward_case(2, 5, 5, 4),
        "cross-attention, scale": _attention_forward_case(3, 4, 6, 8, scale=0.3),
        "causal": _attention_forward_case(2, 5, 5, 4, is_causal=True),
        "additive mask": _attention_forward_case(2, 4, 6, 4, mask=torch.randn(4, 6)),
    },
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default: {
        "self-attention (vit)": _attention_case(2, 5, 5, 4),
        "cross-attention, scale": _attention_case(3, 4, 6, 8, scale=0.3),
        "causal": _attention_case(2, 5, 5, 4, is_causal=True),
        "additive mask": _attention_case(2, 4, 6, 4, mask=torch.randn(4, 6)),
    },
    aten.as_strided_scatter.default: {
        "the whole storage": ((torch.zeros(24), torch.randn(2, 3, 4), [2, 3, 4], [12, 4, 1], 0), None),
        "strided, with an offset": ((torch.randn(4, 6), torch.randn(2, 3), [2, 3], [6, 2], 7), None),
        "transposed view": ((torch.randn(3, 4), torch.randn(4, 3), [4, 3], [1, 4]), None),
    },
    aten.empty_permuted.default: {
        "channels last": (([2, 3, 4, 5], [0, 2, 3, 1]), lambda out: torch.tensor(out.shape)),  # values are unset
    },
    aten.threshold_backward.default: {
        "plain rule": ((torch.randn(2, 3, 5, 5), torch.relu(torch.randn(2, 3, 5, 5)), 0.0), None),
    },
}


def test_every_decomposition_is_tested():
    assert set(REGISTRY) == set(CASES), f"untested decompositions: {set(REGISTRY) - set(CASES)}"


@pytest.mark.parametrize(("op", "case"), [(op, case) for op, cases in CASES.items() for case in cases],
                         ids=lambda v: str(v))
def test_decomposition_matches_torch(op, case):
    args, pick, *kwargs = CASES[op][case]
    kwargs = kwargs[0] if kwargs else {}
    want, got = op(*args, **kwargs), REGISTRY[op](*args, **kwargs)
    if pick:
        want, got = pick(want), pick(got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_relu_rules():
    grad, out = torch.randn(4, 6), torch.relu(torch.randn(4, 6))
    with rules.relu_rule("guided"):
        guided = REGISTRY[aten.threshold_backward.default](grad, out, 0.0)
    with rules.relu_rule("deconvnet"):
        deconv = REGISTRY[aten.threshold_backward.default](grad, out, 0.0)
    torch.testing.assert_close(guided, grad.clamp(min=0) * (out > 0))
    torch.testing.assert_close(deconv, grad.clamp(min=0))
    with pytest.raises(ValueError, match="unknown ReLU rule"):
        with rules.relu_rule("nope"):
            pass


def test_attention_refuses_grouped_query_heads():
    q, k, v = torch.randn(1, 4, 3, 2), torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2)
    with pytest.raises(UnsupportedOpError, match="grouped-query attention"):
        REGISTRY[aten._scaled_dot_product_flash_attention_for_cpu.default](q, k, v)


class _Crop(torch.nn.Module):
    """A crop written with as_strided: its backward copies the gradient into an as_strided view in place."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.as_strided((n, c, h - 2, w - 2), x.stride(), 1)


def test_backward_into_a_strided_view_is_functionalised(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), _Crop(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    path = tmp_path / "crop.onnx"
    export_explainer(model, path, input_shape=(3, 16, 16), layers=["3"], methods=["saliency"])
    images, targets = torch.rand(2, 3, 16, 16), torch.tensor([0, 2])
    raw = Explainer(path).explain(images.numpy(), targets=targets.numpy())["saliency"].raw
    leaf = images.clone().requires_grad_()
    model(leaf).gather(1, targets[:, None]).sum().backward()
    np.testing.assert_allclose(raw, leaf.grad.numpy(), atol=1e-4 * float(leaf.grad.abs().max()))
