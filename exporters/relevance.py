"""Call-site rules for the relevance methods, traced into the shared forward pass.

epsilon-LRP (Bach et al.) and DeepLIFT (Shrikumar et al.) change how relevance flows back through
particular layers.  Both are written here as modified gradients, so they ride the same traced backward
pass as the gradient family:

- epsilon-LRP: R_in = x * J^T (R_out / (z + eps sign z)) at every linear layer (convolution, linear,
  batch norm, pooling, the residual add), relevance passing ReLUs unchanged.  With R = a * g at every
  activation a, that is the plain gradient scaled by z / (z + eps sign z) at each such layer's output z,
  and the relevance at the input is image * g (captum's EpsilonRule; sign 0 counts as +1).
- DeepLIFT, rescale rule: each ReLU passes the gradient times (relu(x) - relu(x')) / (x - x'), where x'
  is the unit's input on the baseline (the plain gradient where x = x'; captum switches to it below
  |x - x'| < 1e-10); each max pool as captum's maxpool rule.  Linear layers keep their gradient.

The forward pass is instrumented per call site (module or functional, as the DESIGN asks), by a torch
function mode, with identity-forward autograd functions whose backward applies the rule only while the
method's own backward pass is traced (onnx_explain.exporters.rules.current_rule); the other methods' backward passes
through the same forward stay as they were.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from onnx_explain.exporters.decompositions import COMPOSITES, aten
from onnx_explain.exporters.errors import UnsupportedOpError
from onnx_explain.exporters.rules import current_rule
from onnx_explain.exporters.translations import unpool_shared

# 2^-126, the smallest normal float32: added to an input change, it is lost beside any |change| > 2^-101,
# and a change of exactly 0 (an input equal to the reference) becomes it.  Not subnormal: a flush to zero
# would not touch it.
UNCHANGED = 2.0 ** -126
_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
         torch.Tensor.__radd__}
_LINEAR_LAYERS = {F.conv2d, F.linear, F.batch_norm, F.avg_pool2d, F.adaptive_avg_pool2d, F.max_pool2d}

# The forward ATen ops (as an eager pass records them) each method has a rule for.  Anything else in the
# model gets an UnsupportedOpError naming the op and its module, never a silently wrong map.
_STRUCTURAL = {"view", "_unsafe_view", "reshape", "flatten", "t", "clone", "detach", "alias", "expand",
               "permute", "transpose", "contiguous", "dropout", "empty", "cat"}
LRP_OPS = _STRUCTURAL | {"convolution", "addmm", "mm", "native_batch_norm", "_native_batch_norm_legit_no_training",
                         "max_pool2d_with_indices", "avg_pool2d", "_adaptive_avg_pool2d", "mean", "add", "add_",
                         "relu", "relu_"}
DEEPLIFT_OPS = LRP_OPS | {"sum", "sub"}
RULED_OPS = {"lrp": LRP_OPS, "deeplift": DEEPLIFT_OPS}  # by the rule of the backward pass


def check_ops(method: str, allowed: set[str], origins: dict[str, str]) -> None:
    """Raise UnsupportedOpError when the model runs a forward op the method has no rule for."""
    missing = sorted(op for op in origins if op not in allowed)
    if missing:
        found = "; ".join(f"aten.{op} (from module {origins[op]})" for op in missing)
        raise UnsupportedOpError(f"{method} has no rule for {found}; it supports convolutions, linear layers, "
                                 "batch norm, max/average pooling, residual adds and ReLU")


class _Stabilised(torch.autograd.Function):
    """Identity forward; in the LRP backward pass, the gradient times z / (z + eps sign z)."""

    @staticmethod
    def forward(z, epsilon):
        # A copy, not a view: the model may go on in place (`out += identity`), which must not reach the
        # saved z.  ONNX Runtime drops the Identity node this leaves.
        return z.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        if current_rule() != "lrp":
            return grad, None
        z, epsilon = ctx.saved_tensors
        magnitude = z.abs()  # z / (z + eps sign z) with sign 0 = +1 is |z| / (|z| + eps): fewer passes
        return grad * (magnitude / (magnitude + epsilon)), None


class _SiteReLU(torch.autograd.Function):
    """relu(x) at a call site, with the relevance methods' backward rules (the other methods' ReLU rules
    otherwise, onnx_explain.exporters.rules).

    DeepLIFT (given the reference input x'): the gradient times the rescale multiplier.
    LRP (given epsilon, where x is a layer output that LRP stabilises): the gradient times
    [x > 0] x / (x + eps) = out / (out + eps), the ReLU's mask and the layer's stabiliser in one
    factor; x is then the layer's output before the stabiliser (the same values), which the ReLU's
    path skips: three passes over the activation, where a separate mask and stabiliser take seven.
    """

    @staticmethod
    def forward(x, reference, epsilon):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx, grad):
        x, reference, epsilon, out = ctx.saved_tensors
        rule = current_rule()
        if rule == "deeplift" and reference is not None:
            # Only the batch-sized terms are written out; [x' > 0] is x's own mask where x = x', and what
            # reads only the reference is done at export for the default baseline (default_inputs.py).
            fallback = (reference > 0).to(x.dtype) * UNCHANGED
            return grad * (_moved(out - torch.relu(reference), fallback) / _moved(x - reference)), None, None
        if rule == "lrp" and epsilon is not None:
            return grad * (out / (out + epsilon)), None, None
        return aten.threshold_backward(grad, x, 0), None, None


def _moved(change: torch.Tensor, fallback: torch.Tensor | float = UNCHANGED) -> torch.Tensor:
    """change + fallback, fallback at most UNCHANGED: a rescale multiplier _moved(dy) / _moved(dx) is the
    secant dy / dx wherever |dx| > 2^-101 (UNCHANGED rounds away beside it), and fallback / UNCHANGED
    where dx is exactly 0 (dy is 0 there too).  Each pass is one Add on the batch, where captum's
    threshold (|dx| < 1e-10: the plain gradient) takes five (Abs, Less, Cast and the blend)."""
    return change + fallback


class _RescaleMaxPool(torch.autograd.Function):
    """max_pool2d(x); in the DeepLIFT backward pass, captum's maxpool rule: each window's output change,
    split at the larger of the two maxima, goes to the image's and the reference's argmax, and is divided
    by the input change there (windows that share a maximum add up)."""

    @staticmethod
    def forward(x, reference, kernel, stride, padding, dilation, ceil_mode):
        return aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.pool = inputs[2:]

    @staticmethod
    def backward(ctx, grad):
        x, reference = ctx.saved_tensors
        out, unpool = _pool(x, ctx.pool)
        if current_rule() != "deeplift":
            return (unpool(grad),) + (None,) * 6
        # The reference's pool on its one image, not on a copy per image: at the default baseline it is
        # done at export.  The images share its indices (onnx_explain::unpool_shared).
        out_ref, indices_ref = aten.max_pool2d_with_indices(reference, *ctx.pool)
        top = torch.maximum(out, out_ref)
        # Where x = x', a position that is x's argmax gets (top - out_ref) = 0, the other term 0, so the
        # fallback makes it the plain gradient there; other unchanged positions get nothing.
        change = unpool(grad * _moved(top - out_ref)) + unpool_shared(grad * (out - top), x, indices_ref)
        return (change / _moved(x - reference),) + (None,) * 6


def _pool(x: torch.Tensor, pool):
    """max_pool2d(x) and the map that sends a gradient at its output back to each window's argmax."""
    out, indices = aten.max_pool2d_with_indices(x, *pool)
    return out, lambda g: aten.max_pool2d_with_indices_backward(g, x, *pool, indices)


def _pool_args(args, kwargs):
    """(input, kernel, stride, padding, dilation, ceil_mode) of an F.max_pool2d call."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    if bound.get("return_indices"):
        raise UnsupportedOpError("DeepLIFT cannot rule a max pool that returns its indices")
    pair = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
    kernel = pair(bound["kernel_size"])
    stride = pair(bound.get("stride") or kernel)
    return (bound["input"], kernel, stride, pair(bound.get("padding", 0)), pair(bound.get("dilation", 1)),
            bool(bound.get("ceil_mode", False)))


class CallSites(TorchFunctionMode):
    """The forward pass's call-site instrumentation.

    Always: routes the torch functions registered with register_composite to their replacements.
    lrp_epsilon (a scalar tensor): stabilises the output of every linear layer and residual add; a ReLU
    that reads such an output takes the stabiliser along with its mask (_SiteReLU).
    record (a list): appends each ReLU's and max pool's input, in call order (the reference pass).
    references (a list): the reference inputs recorded on the baseline, consumed in the same order by
    the ReLUs and max pools of this pass, which get DeepLIFT's rescale rule.
    """

    def __init__(self, lrp_epsilon: torch.Tensor | None = None, record: list | None = None,
                 references: list | None = None) -> None:
        super().__init__()
        # eps + UNCHANGED is eps for any eps > 2^-101; at eps = 0 (LRP-0) it keeps 0 / 0 out of the
        # stabiliser where a layer's output is exactly 0, making its factor 0 there instead of NaN.
        self.epsilon = None if lrp_epsilon is None else lrp_epsilon + UNCHANGED
        self.record = record
        self.references = None if references is None else iter(references)
        self.stabilised: dict[int, tuple] = {}  # id(output) -> (output, its version, the layer's output)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS or func is F.max_pool2d:
            out = self._nonlinear(func, args, kwargs)
        else:
            out = COMPOSITES.get(func, func)(*args, **kwargs)
        if self.epsilon is not None and (func in _LINEAR_LAYERS or _is_residual_add(func, args)):
            if not isinstance(out, torch.Tensor):
                raise UnsupportedOpError("lrp_epsilon cannot rule a max pool that returns its indices")
            stabilised = _Stabilised.apply(out, self.epsilon)
            # A ReLU of it reads a copy of the layer's output that nothing else can change in place.
            self.stabilised[id(stabilised)] = (stabilised, stabilised._version, out.clone())
            out = stabilised
        return out

    def _nonlinear(self, func, args, kwargs):
        x = args[0] if args else kwargs["input"]
        if self.record is not None:
            self.record.append(x.detach())
            if func in _RELUS:  # not in place: that would overwrite the recorded input
                return torch.relu(x)
        stabilised, version, layer_output = self.stabilised.get(id(x), (None, None, None))
        # not when the stabilised output was changed in place since (x += 1): the copy would be stale
        epsilon = self.epsilon if func in _RELUS and stabilised is x and x._version == version else None
        if self.references is None and epsilon is None:
            return func(*args, **kwargs)
        reference = None if self.references is None else self._reference(x)
        if func is F.max_pool2d:
            x, *pool = _pool_args(args, kwargs)
            return _RescaleMaxPool.apply(x, reference, *pool)
        # Not in place (the stabiliser's copy is bypassed): models use a ReLU's result, not its input.
        return _SiteReLU.apply(x if epsilon is None else layer_output, reference, epsilon)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        reference = next(self.references, None)
        if reference is None or reference.shape[1:] != x.shape[1:]:
            raise UnsupportedOpError("DeepLIFT could not pair a ReLU or max pool with its reference: the model "
                                     "calls them in another order on the baseline than on the images")
        return reference


def _is_residual_add(func, args) -> bool:
    """A sum of two activations of the same shape (not a bias, a scalar or a broadcast)."""
    return (func in _ADDS and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2])
            and args[0].shape == args[1].shape)
