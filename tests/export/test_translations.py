"""Each custom ONNX translation against torch's own kernels, case by case, run in ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnx_explain.exporters.errors import UnsupportedOpError
from onnx_explain.exporters.translations import TRANSLATIONS, aten, check_index_readers


class _PoolRoundTrip(torch.nn.Module):
    """max_pool2d_with_indices, then its backward fed by those indices: the pair the translations cover."""

    def __init__(self, k: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> None:
        super().__init__()
        self.pool = ([k, k], [stride, stride], [padding, padding], [dilation, dilation], ceil_mode)

    def forward(self, x: torch.Tensor, grad: torch.Tensor):
        values, indices = aten.max_pool2d_with_indices(x, *self.pool)
        return values, aten.max_pool2d_with_indices_backward(grad, x, *self.pool, indices)


POOL_CASES = {
    "3x3 stride 2 pad 1 (resnet)": (16, 16, 3, 2, 1, 1, False, False),
    "overlapping after relu (ties at zero)": (15, 15, 3, 2, 1, 1, False, True),
    "2x2 stride 2 (vgg)": (16, 16, 2, 2, 0, 1, False, False),
    "ceil mode (squeezenet)": (15, 13, 3, 2, 0, 1, True, False),
    "ceil mode, padded": (10, 11, 3, 2, 1, 1, True, False),
    "dilated": (12, 12, 2, 1, 0, 2, False, False),
    "all ties": (6, 6, 3, 1, 1, 1, False, "zeros"),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_pair_matches_torch(case, tmp_path):
    h, w, k, stride, padding, dilation, ceil_mode, inputs = POOL_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, h, w, generator=gen)
    x = torch.zeros_like(x) if inputs == "zeros" else torch.relu(x) if inputs else x
    module = _PoolRoundTrip(k, stride, padding, dilation, ceil_mode)
    values, _ = aten.max_pool2d_with_indices(x, *module.pool)
    grad = torch.randn(values.shape, generator=gen)
    want = module(x, grad)
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x, grad), str(path), dynamo=True, optimize=False, verbose=False,
                          input_names=["x", "grad"], custom_translation_table=TRANSLATIONS)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "grad": grad.numpy()})
    for g, t in zip(got, want, strict=True):
        np.testing.assert_allclose(g, t.numpy(), rtol=1e-6, atol=1e-6)


class _SharedUnpool(torch.nn.Module):
    """One image's max pool (the reference), its indices scattering the gradients of N images."""

    pool = ([3, 3], [2, 2], [1, 1], [1, 1], False)

    def forward(self, reference: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        _, indices = aten.max_pool2d_with_indices(reference, *self.pool)
        return torch.ops.onnx_explain.unpool_shared(grad, x, indices)


def test_shared_unpool_matches_torch_per_image(tmp_path):
    """Against torch's own backward, image by image, with the reference's indices; ties included."""
    gen = torch.Generator().manual_seed(1)
    reference = torch.relu(torch.randn(1, 3, 11, 12, generator=gen))
    x = torch.randn(4, 3, 11, 12, generator=gen)
    grad = torch.randn(4, 3, 6, 6, generator=gen)
    module = _SharedUnpool()
    _, indices = aten.max_pool2d_with_indices(reference, *module.pool)
    want = torch.cat([aten.max_pool2d_with_indices_backward(g[None], reference, *module.pool, indices)
                      for g in grad])
    torch.testing.assert_close(module(reference, x, grad), want)
    path = tmp_path / "shared.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (reference, x, grad), str(path), dynamo=True, optimize=False, verbose=False,
                          input_names=["reference", "x", "grad"], custom_translation_table=TRANSLATIONS)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"reference": reference.numpy(), "x": x.numpy(), "grad": grad.numpy()})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


class _Active(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onnx_explain.active(x)


def test_relu_mask_is_exact_in_onnx_runtime(tmp_path):
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    x = torch.tensor([0.0, tiny, 3 * tiny, 1e-40, 2.0 ** -126, 1e-30, 1e-3, 1.0, 3e38, float("inf")])
    x = x.repeat(16, 1).reshape(2, 4, 2, 10)  # the layout of an activation, as the graph has it
    path = tmp_path / "active.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Active(), (x,), str(path), dynamo=True, optimize=False, verbose=False,
                          input_names=["x"], custom_translation_table=TRANSLATIONS)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_array_equal(got, (x > 0).float().numpy())
    np.testing.assert_array_equal(_Active()(x).numpy(), got)


def test_index_readers_other_than_the_backward_are_refused():
    def unpool(x):
        values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        return torch.nn.functional.max_unpool2d(values, indices, 2)

    graph = torch.fx.experimental.proxy_tensor.make_fx(unpool)(torch.randn(1, 1, 4, 4)).graph
    with pytest.raises(UnsupportedOpError, match="reads max-pool indices"):
        check_index_readers(graph)
