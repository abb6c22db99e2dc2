"""ONNX translations of ATen ops, written in onnxscript, where the stock translation is missing or slow.

They are handed to torch.onnx.export as its custom_translation_table; each is named after its ATen op and
documents the op's schema.  Where a pair of ops hands an intermediate value from one to the other (the
max-pool indices), the ONNX side may encode it differently from torch as long as the pair agrees: the
traced graph run in torch and the file run in ONNX Runtime still compute the same outputs, and export
validation checks that they do.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import torch
from onnxscript import opset20 as op

from onnx_explain.exporters.errors import UnsupportedOpError

aten = torch.ops.aten


def aten_max_pool2d_with_indices(self, kernel_size: Sequence[int], stride: Sequence[int] = (),
                                 padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                                 ceil_mode: bool = False):
    """max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0,
    int[2] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor)

    ONNX MaxPool, whose indices count over the whole tensor, where torch counts within each image plane.
    They are left that way for aten_max_pool2d_with_indices_backward, their only reader: the stock
    translation converted them with a second MaxPool pass over the whole input, which cost as much as the
    pooling.  Both runtimes keep the first maximum of a window.
    """
    kernel = _pair(kernel_size)
    return op.MaxPool(self, kernel_shape=kernel, strides=_pair(stride) if stride else kernel,
                      pads=_pair(padding) * 2, dilations=_pair(dilation), ceil_mode=int(ceil_mode))


def aten_max_pool2d_with_indices_backward(grad_output, self, kernel_size: Sequence[int], stride: Sequence[int],
                                          padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool,
                                          indices):
    """max_pool2d_with_indices_backward(Tensor grad_output, Tensor self, int[2] kernel_size, int[2] stride,
    int[2] padding, int[2] dilation, bool ceil_mode, Tensor indices) -> Tensor

    One scatter-add of every window's gradient at its maximum, over the flattened input (the indices are
    ONNX MaxPool's whole-tensor ones); windows that share a maximum add up.  It replaced routing the
    gradient through k*k window taps and a transposed convolution, which cost about 4x the forward pass of
    resnet18's max pool.
    """
    flat = op.Constant(value_ints=[-1])
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), grad_output), op.Shape(self))
    routed = op.ScatterElements(op.Reshape(zeros, flat), op.Reshape(indices, flat), op.Reshape(grad_output, flat),
                                axis=0, reduction="add")
    return op.Reshape(routed, op.Shape(self))


@torch.library.custom_op("onnx_explain::active", mutates_args=())
def active(self: torch.Tensor) -> torch.Tensor:
    """1 where a ReLU's output is positive, else 0: the mask of ReLU's backward pass."""
    return (self > 0).to(self.dtype)


@active.register_fake
def _(self):
    return torch.empty_like(self)


# 2^127, the largest power of two in float32: one HardSigmoid lifts any positive float32 to at least 2^-22
# (the smallest subnormal is 2^-149), a second lifts that past 1, and both clip to [0, 1].
_STEEP = 2.0 ** 127


def onnx_explain_active(self):
    """onnx_explain::active(Tensor self) -> Tensor, for self >= 0 (a ReLU's output)

    Two HardSigmoid(alpha=2^127, beta=0), exactly (self > 0) for every self >= 0, including subnormals
    and inf.  ONNX Runtime runs activations on its blocked NCHWc layout in place; Greater and Cast have no
    NCHWc kernels, so the comparison made it move the forward activation and the backward gradient out of
    that layout and back at every ReLU (with onnx_explain.exporters.decompositions._blocked, resnet50's saliency
    graph went from 141 reorders, 9% of its time at batch 8, to 16).
    """
    return op.HardSigmoid(op.HardSigmoid(self, alpha=_STEEP, beta=0.0), alpha=_STEEP, beta=0.0)


@torch.library.custom_op("onnx_explain::unpool_shared", mutates_args=())
def unpool_shared(grad_output: torch.Tensor, self: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """max_pool2d_with_indices_backward of grad_output [N, C, h, w] into zeros like self [N, C, H, W], at
    the indices [1, C, h, w] of one image's max pool (DeepLIFT's reference), shared by the N images."""
    n, c = grad_output.shape[:2]
    flat = torch.zeros_like(self).flatten(2)
    return flat.scatter_add(2, indices.flatten(2).expand(n, c, -1), grad_output.flatten(2)).reshape(self.shape)


@unpool_shared.register_fake
def _(grad_output, self, indices):
    return torch.empty_like(self)


def onnx_explain_unpool_shared(grad_output, self, indices):
    """onnx_explain::unpool_shared(Tensor grad_output, Tensor self, Tensor indices) -> Tensor

    One scatter-add along each image's flattened [C * H * W]: ONNX MaxPool's whole-tensor indices of a
    one-image pool are positions within an image, so the N images share them as they are.  Pooling the
    reference once and sharing its indices replaced pooling a copy of it per image (an index-returning
    MaxPool over the whole batch).
    """
    rows = op.Concat(op.Shape(self, start=0, end=1), op.Constant(value_ints=[-1]), axis=0)
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), grad_output), op.Shape(self))
    flat_grad = op.Reshape(grad_output, rows)
    shared = op.Expand(op.Reshape(indices, op.Constant(value_ints=[1, -1])), op.Shape(flat_grad))
    routed = op.ScatterElements(op.Reshape(zeros, rows), shared, flat_grad, axis=1, reduction="add")
    return op.Reshape(routed, op.Shape(self))


def _pair(v) -> list[int]:
    v = [int(i) for i in v] if isinstance(v, (list, tuple)) else [int(v)]
    return v * 2 if len(v) == 1 else v


TRANSLATIONS: dict[torch._ops.OpOverload, Callable] = {
    aten.max_pool2d_with_indices.default: aten_max_pool2d_with_indices,
    aten.max_pool2d_with_indices_backward.default: aten_max_pool2d_with_indices_backward,
    torch.ops.onnx_explain.active.default: onnx_explain_active,
    torch.ops.onnx_explain.unpool_shared.default: onnx_explain_unpool_shared,
}


_INDEX_READERS = (aten.max_pool2d_with_indices_backward.default, torch.ops.onnx_explain.unpool_shared.default)


def check_index_readers(graph: torch.fx.Graph) -> None:
    """Raise UnsupportedOpError when anything but the max-pool backward reads max-pool indices, which the
    ONNX side encodes differently (a model that returns them or unpools with them)."""
    pools = [n for n in graph.nodes if n.target == aten.max_pool2d_with_indices.default]
    for pool in pools:
        for item in pool.users:
            if item.target is not operator.getitem or item.args[1] != 1:
                continue
            for reader in item.users:
                if reader.target not in _INDEX_READERS:
                    raise UnsupportedOpError(
                        f"the model reads max-pool indices ({reader.target}); only max pooling whose indices "
                        "serve its own backward pass can be exported (return_indices=True is not supported)")
