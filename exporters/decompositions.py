"""Decompositions of ATen backward ops into forward ops that ONNX can express.

Each function is named after its ATen op and documents the op's schema.  They are added to
torch's core ATen decompositions and handed to make_fx, so the traced backward pass contains only ops
that torch.onnx translates.  Parameters are frozen, so only input gradients are ever needed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch._decomp import core_aten_decompositions

from onnx_explain.exporters.errors import UnsupportedOpError

aten = torch.ops.aten
REGISTRY: dict[torch._ops.OpOverload, Callable] = {}  # ATen op -> its decomposition
# torch function -> its replacement during the trace, for composite ops that torch expands above the
# decomposition table (and above autograd, so that their backward would be theirs)
COMPOSITES: dict[Callable, Callable] = {}


def _registrar(table: dict, key, kind: str) -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        if key in table:
            warnings.warn(f"{kind} of {key} registered twice; {fn.__name__} replaces the first", stacklevel=3)
        table[key] = fn
        return fn

    return wrap


def register(op: torch._ops.OpOverload) -> Callable[[Callable], Callable]:
    """Register the decorated function as the decomposition of `op`."""
    return _registrar(REGISTRY, op, "decomposition")


def register_composite(fn: Callable) -> Callable[[Callable], Callable]:
    """Register the decorated function in place of the torch function `fn` during the trace."""
    return _registrar(COMPOSITES, fn, "composite")


def decomposition_table() -> dict:
    """torch's core ATen decompositions plus ours (ours win)."""
    return {**core_aten_decompositions(), **REGISTRY}


def _output_padding(grad: torch.Tensor, inp: torch.Tensor, kernel, stride, padding, dilation) -> list[int]:
    """The output_padding that makes a transposed conv/pool map `grad` back to `inp`'s spatial size."""
    pads = []
    for i, (k, s, p, d) in enumerate(zip(kernel, stride, padding, dilation, strict=True)):
        covered = (grad.shape[2 + i] - 1) * s - 2 * p + d * (k - 1) + 1
        pads.append(inp.shape[2 + i] - covered)
    return pads


@register(aten.convolution_backward.default)
def aten_convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                              output_padding, groups, output_mask):
    """convolution_backward(Tensor grad_output, Tensor input, Tensor weight, SymInt[]? bias_sizes,
    SymInt[] stride, SymInt[] padding, SymInt[] dilation, bool transposed, SymInt[] output_padding,
    SymInt groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)

    The input gradient of a convolution is the transposed convolution with the same weight.  With
    stride 1 it is also an ordinary convolution with the weight flipped in space and its in/out
    channels swapped per group, which ONNX Runtime runs several times faster than ConvTranspose (its
    NCHWc kernels apply); the flipped weight is a constant that it folds at load.
    """
    if transposed or output_mask[1] or output_mask[2]:
        raise UnsupportedOpError("aten.convolution_backward: only the input gradient of a non-transposed "
                                 "convolution is supported (parameters are frozen; ConvTranspose layers are not)")
    kernel = weight.shape[2:]
    full_pad = [d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation, strict=True)]
    if all(s == 1 for s in stride) and min(full_pad) >= 0:
        grad_input = aten.convolution(grad_output, _flipped(weight, groups), None, [1] * len(kernel), full_pad,
                                      dilation, False, [0] * len(kernel), groups)
        return grad_input, None, None
    pad = _output_padding(grad_output, input, kernel, stride, padding, dilation)
    grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, pad, groups)
    return _blocked(grad_input), None, None


def _blocked(x: torch.Tensor) -> torch.Tensor:
    """x through an identity depthwise 1x1 convolution: a layout hint for ONNX Runtime.

    Its NCHWc layout starts only at a convolution's output and an elementwise op stays in it only when
    all its inputs are in it.  The backward pass's residual stream sums the outputs of ConvTranspose
    (no NCHWc kernel) and of convolutions, so without this hint the whole stream below a strided
    convolution ran in plain NCHW, moving every branch's gradient and mask out of the blocked layout
    and back.
    """
    c = x.shape[1]
    if c % 8:  # the layout blocks 8 or 16 channels; other counts (an image's 3) never enter it
        return x
    return aten.convolution(x, torch.ones(c, 1, 1, 1, dtype=x.dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], c)


def _flipped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, in/g, *k] -> [in, out/g, *k], spatially flipped: the kernel of the adjoint convolution."""
    out_c, in_per_group, *kernel = weight.shape
    w = weight.reshape(groups, out_c // groups, in_per_group, *kernel).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_c // groups, *kernel).flip(list(range(2, 2 + len(kernel))))


def _crop_padded(full: torch.Tensor, padding: list[int], size: tuple[int, int]) -> torch.Tensor:
    """The input's region of a gradient laid out over the padded input from its top-left corner; ceil
    mode may leave `full` short of the bottom/right edge (those positions get no gradient) or past it."""
    (ph, pw), (h, w) = padding, size
    short_h, short_w = max(0, ph + h - full.shape[2]), max(0, pw + w - full.shape[3])
    full = torch.nn.functional.pad(full, [0, short_w, 0, short_h])
    return full[:, :, ph:ph + h, pw:pw + w]


@register(aten.avg_pool2d_backward.default)
def aten_avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override):
    """avg_pool2d_backward(Tensor grad_output, Tensor self, int[2] kernel_size, int[2] stride, int[2] padding,
    bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor

    Spreads each window's gradient evenly over the window: a depthwise transposed convolution with a
    ones kernel, after dividing by the divisor the forward used for that window.
    """
    kernel, stride, padding = _pair(kernel_size), _pair(stride or kernel_size), _pair(padding)
    (h, w), (oh, ow) = self.shape[2:], grad_output.shape[2:]
    if divisor_override:
        scaled = grad_output / divisor_override
    else:
        rows = _pool_extents(h, oh, kernel[0], stride[0], padding[0], count_include_pad, grad_output)
        cols = _pool_extents(w, ow, kernel[1], stride[1], padding[1], count_include_pad, grad_output)
        scaled = grad_output / (rows[:, None] * cols[None, :])
    c = self.shape[1]
    weight = torch.ones(c, 1, *kernel, dtype=grad_output.dtype)
    full = aten.convolution(scaled, weight, None, stride, [0, 0], [1, 1], True, [0, 0], c)
    return _crop_padded(full, padding, (h, w))


@register(aten.empty_permuted.default)
def aten_empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
    """empty_permuted(SymInt[] size, int[] physical_layout, *, ScalarType? dtype=None, Layout? layout=None,
    Device? device=None, bool? pin_memory=None) -> Tensor

    The memory layout is invisible in ONNX and the values are unset, so zeros of the logical size serve
    (seen in the backward of efficientnet's SiLU).
    """
    return torch.zeros(size, dtype=dtype or torch.float32, device=device)


def _pair(v) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v


def _pool_extents(size: int, out: int, k: int, s: int, p: int, count_include_pad: bool,
                  like: torch.Tensor) -> torch.Tensor:
    """Per output index, the window length along one axis that avg_pool2d divides by.

    Built from arange rather than a tensor literal: constants created inside a decomposition do not
    survive the re-trace of torch.onnx.export, ops on arange do (and ONNX Runtime folds them).
    """
    start = torch.arange(out, dtype=like.dtype) * s - p
    end = torch.clamp(start + k, max=size + p)
    if count_include_pad:
        return end - start
    return torch.clamp(end, max=size) - torch.clamp(start, min=0)


@register(aten._adaptive_avg_pool2d_backward.default)
def aten__adaptive_avg_pool2d_backward(grad_output, self):
    """_adaptive_avg_pool2d_backward(Tensor grad_output, Tensor self) -> Tensor

    Output cell i averages the input window [floor(i*H/oh), ceil((i+1)*H/oh)) along each axis, so the
    gradient goes back through the per-axis averaging matrices: A_h^T @ grad @ A_w.
    """
    (h, w), (oh, ow) = self.shape[2:], grad_output.shape[2:]
    if oh == 1 and ow == 1:
        # Global pooling: a depthwise convolution of the [1, 1] gradient padded by the input size
        # spreads it evenly, and starts ONNX Runtime's blocked layout (see _blocked).
        c = self.shape[1]
        spread = torch.full((c, 1, h, w), 1.0 / (h * w), dtype=grad_output.dtype)
        return aten.convolution(grad_output, spread, None, [1, 1], [h - 1, w - 1], [1, 1], False, [0, 0], c)
    rows = _adaptive_matrix(h, oh, grad_output.dtype)  # [oh, h]
    cols = _adaptive_matrix(w, ow, grad_output.dtype)  # [ow, w]
    return rows.t() @ grad_output @ cols


@register(aten._adaptive_avg_pool2d.default)
def aten__adaptive_avg_pool2d(self, output_size):
    """_adaptive_avg_pool2d(Tensor self, SymInt[2] output_size) -> Tensor

    A_h @ x @ A_w^T with the averaging matrices.  ATen's composite adaptive_avg_pool2d restrides a 1x1
    result to the input's memory format with as_strided_, which on channels-last activations
    (convnext) leaves an as_strided_scatter in the backward that ONNX cannot express; that composite
    runs above the decomposition table, so F.adaptive_avg_pool2d is routed here (see below).
    """
    (h, w), (oh, ow) = self.shape[-2:], output_size
    return _adaptive_matrix(h, oh, self.dtype) @ self @ _adaptive_matrix(w, ow, self.dtype).t()


@register_composite(torch.nn.functional.adaptive_avg_pool2d)
def adaptive_avg_pool2d(input, output_size):
    """F.adaptive_avg_pool2d(input, output_size) through aten__adaptive_avg_pool2d."""
    size = [output_size] * 2 if isinstance(output_size, int) else output_size
    return aten__adaptive_avg_pool2d(input, [input.shape[-2 + i] if s is None else s for i, s in enumerate(size)])


def _attention_scores(query, key, dropout_p, is_causal, attn_mask, scale) -> tuple[torch.Tensor, float]:
    """([N, H, L, S] q k^T * scale plus the mask, scale): plain batched matrix products (torch's own math
    form adds a -inf guard to its softmax and broadcasts q and k by copies, which ONNX Runtime runs)."""
    if dropout_p:
        raise UnsupportedOpError("attention with dropout cannot be explained (export the model in eval mode)")
    if query.shape[1] != key.shape[1]:
        raise UnsupportedOpError("grouped-query attention (fewer key heads than query heads) is not supported")
    n, h, length, dim = query.shape
    scale = dim ** -0.5 if scale is None else scale
    scores = _batched(query, key.transpose(-2, -1)) * scale
    if is_causal:
        attn_mask = torch.ones(length, key.shape[-2], dtype=torch.bool).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return scores, scale


def _batched(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over the two leading axes [N, H] as one bmm."""
    return torch.bmm(a.flatten(0, 1), b.flatten(0, 1)).view(*a.shape[:2], a.shape[2], b.shape[3])


@register(aten._scaled_dot_product_flash_attention_for_cpu.default)
def aten__scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p=0.0, is_causal=False, *,
                                                     attn_mask=None, scale=None):
    """_scaled_dot_product_flash_attention_for_cpu(Tensor query, Tensor key, Tensor value, float dropout_p=0.0,
    bool is_causal=False, *, Tensor? attn_mask=None, float? scale=None) -> (Tensor output, Tensor logsumexp)

    softmax(q k^T * scale + mask) v, laid out in memory as the kernel lays it out ([L, N, H, E]: attention
    modules view the output after permuting it so); logsumexp is dropped by the trace unless read.
    """
    scores, _ = _attention_scores(query, key, dropout_p, is_causal, attn_mask, scale)
    out = _batched(torch.softmax(scores, dim=-1), value)
    return out.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3), torch.logsumexp(scores, dim=-1)


@register(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def aten__scaled_dot_product_flash_attention_for_cpu_backward(grad_out, query, key, value, out, logsumexp, dropout_p,
                                                              is_causal, *, attn_mask=None, scale=None):
    """_scaled_dot_product_flash_attention_for_cpu_backward(Tensor grad_out, Tensor query, Tensor key,
    Tensor value, Tensor out, Tensor logsumexp, float dropout_p, bool is_causal, *, Tensor? attn_mask=None,
    float? scale=None) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)

    Attention's backward from its math form: the probabilities P = softmax(q k^T * scale + mask) are
    recomputed, then dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q * scale.
    """
    scores, scale = _attention_scores(query, key, dropout_p, is_causal, attn_mask, scale)
    probs = torch.softmax(scores, dim=-1)
    grad_scores = probs * (_batched(grad_out, value.transpose(-2, -1)) - (grad_out * out).sum(-1, keepdim=True))
    return (_batched(grad_scores, key) * scale, _batched(grad_scores.transpose(-2, -1), query) * scale,
            _batched(probs.transpose(-2, -1), grad_out))


@register(aten.as_strided_scatter.default)
def aten_as_strided_scatter(self, src, size, stride, storage_offset=None):
    """as_strided_scatter(Tensor self, Tensor src, SymInt[] size, SymInt[] stride, SymInt? storage_offset=None)
    -> Tensor

    src written over the elements of self's storage that as_strided(size, stride, storage_offset) views:
    a scatter at their flat indices, or src itself where the view covers the whole storage in order (the
    backward of as_strided views, once the trace is functionalised).
    """
    if not self.is_contiguous():
        raise UnsupportedOpError("aten.as_strided_scatter on a non-contiguous tensor has no ONNX form here")
    offset = storage_offset or 0
    if offset == 0 and self.numel() == src.numel() and list(stride) == _contiguous_strides(size):
        return src.reshape(self.shape)
    index = torch.zeros((), dtype=torch.int64) + offset
    for n, step in zip(size, stride, strict=True):
        index = index.unsqueeze(-1) + torch.arange(n) * step
    flat = self.reshape(-1).index_put((index.reshape(-1),), src.reshape(-1))
    return flat.reshape(self.shape)


def _contiguous_strides(size) -> list:
    strides, step = [], 1
    for n in reversed(list(size)):
        strides.insert(0, step)
        step = step * n
    return strides


_ATEN_LINEAR = torch.nn.functional.linear


# A composite as well: linear_everywhere catches the calls that look F.linear up; the call-site mode
# catches the model's calls through a reference to ATen's linear taken before the trace.
@register_composite(_ATEN_LINEAR)
def linear(input, weight, bias=None):
    """F.linear on tokens [N, T, F] as a matrix product of [N * T, F]: ATen's own linear, traced under
    functorch's vjp, turns the symbolic batch into the trace's batch size (a guard) on vit's MLP, and on
    attention's non-contiguous input it expands the weight over every token (1.4 GB per vit_b_16 block)."""
    if input.dim() <= 2:
        return _ATEN_LINEAR(input, weight, bias)
    return _ATEN_LINEAR(input.flatten(0, -2), weight, bias).unflatten(0, input.shape[:-1])


@contextlib.contextmanager
def linear_everywhere() -> Iterator[None]:
    """F.linear is `linear` above for the duration, also where torch calls it from inside its own
    functions (F.multi_head_attention_forward), which a torch function mode does not see."""
    torch.nn.functional.linear = linear
    try:
        yield
    finally:
        torch.nn.functional.linear = _ATEN_LINEAR


def _adaptive_matrix(size: int, out: int, dtype: torch.dtype) -> torch.Tensor:
    """[out, size]: row i averages [floor(i*size/out), ceil((i+1)*size/out)), built from arange (see
    _pool_extents for why)."""
    i = torch.arange(out)[:, None]
    j = torch.arange(size)[None, :]
    start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
    inside = (j >= start) & (j < end)
    return inside.to(dtype) / (end - start).to(dtype)
