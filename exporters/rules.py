"""Modified backward rules for ReLU, baked into the traced backward pass.

Every ReLU, whether an nn.ReLU module, F.relu, torch.relu or an in-place variant, reaches autograd as
aten.relu, whose backward is aten.threshold_backward.  Decomposing threshold_backward according to the
rule in force while a backward pass is traced therefore rules every call site, not just nn.ReLU
modules (captum's hooks miss functional calls), and lets one graph hold several backward passes with
different rules over a single shared forward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from onnx_explain.exporters.decompositions import aten, register
from onnx_explain.exporters.errors import UnsupportedOpError
from onnx_explain.exporters.translations import active

# lrp and deeplift keep autograd's ReLU gradient here: their rules live at call sites (relevance.py),
# which read current_rule() too.
RULES = ("plain", "guided", "deconvnet", "lrp", "deeplift")
_rule: contextvars.ContextVar[str] = contextvars.ContextVar("relu_rule", default="plain")


@contextlib.contextmanager
def relu_rule(name: str) -> Iterator[None]:
    """Backward passes traced inside this block use the named ReLU rule."""
    if name not in RULES:
        raise ValueError(f"unknown ReLU rule {name!r}; expected one of {RULES}")
    token = _rule.set(name)
    try:
        yield
    finally:
        _rule.reset(token)


def current_rule() -> str:
    """The rule of the backward pass being traced."""
    return _rule.get()


@register(aten.threshold_backward.default)
def aten_threshold_backward(grad_output, self, threshold):
    """threshold_backward(Tensor grad_output, Tensor self, Scalar threshold) -> Tensor

    plain: grad where the unit was active (autograd's own rule).
    guided (Springenberg et al.): and only where the incoming gradient is positive.
    deconvnet (Zeiler & Fergus): the positive part of the incoming gradient, ignoring the forward mask.
    """
    rule = _rule.get()
    if rule == "deeplift":
        raise UnsupportedOpError("DeepLIFT met a ReLU it did not pair with its reference (a ReLU called in a "
                                 "way onnx_explain.exporters.relevance.CallSites does not intercept)")
    if rule == "deconvnet":
        return torch.relu(grad_output)
    if rule == "guided":
        grad_output = torch.relu(grad_output)
    # A multiply by the mask, not where(): ONNX Runtime's Where is several times slower on large maps.
    if threshold == 0:  # self is a ReLU's output, so >= 0: the mask ONNX Runtime keeps in its fast layout
        return grad_output * active(self)
    return grad_output * (self > threshold).to(grad_output.dtype)
