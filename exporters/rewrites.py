"""Exact rewrites of the traced graph that ONNX Runtime runs faster.

They run on the ATen-level FX graph after the trace and before torch.onnx.  Each one computes the same
values as the graph it replaces (up to float rounding); the parity tests hold them to the references.
"""

from __future__ import annotations

import operator

import torch

import onnx_explain.exporters.translations  # noqa: F401  (registers onnx_explain::active)
from onnx_explain.exporters.decompositions import aten

_POOL_BACKWARD = aten.max_pool2d_with_indices_backward.default
_MUL = aten.mul.Tensor
_ACTIVE = torch.ops.onnx_explain.active.default


def factors_before_pool_routing(graph: torch.fx.Graph) -> None:
    """Apply the factors that follow a max pool's backward to its window gradients instead.

    The backward sends each window's gradient to the window's maximum, in a scatter over the pool's
    input, 4x the size of its output.  What follows it in a ReLU -> max pool stem (resnet) is the
    ReLU's mask and the batch norm's per-channel scale, each a pass over that larger map, and the mask
    is two more passes to compute it from the ReLU's output.  Both can be applied before the scatter:
    a window's maximum is the pooled value y, so the input's mask at it equals active(y); and a factor
    that is constant over each image plane commutes with a scatter that stays within the plane.  Under
    guided backprop the ReLU's backward is relu(grad) * mask; relu(scatter(g * active(y))) is that too,
    since the mask is 0 or 1.  The masks, the scale and two layout reorders then run over the pooled map
    instead of the 4x larger one.
    """
    for node in list(graph.nodes):
        if node.target is _POOL_BACKWARD:
            _pull_factors_in(graph, node)


def _pull_factors_in(graph: torch.fx.Graph, backward: torch.fx.Node) -> None:
    pool_input, pooled = backward.args[1], _pooled_output(backward.args[7])
    # One reader at a time: the result is read nowhere else, so no factor can be computed from it.
    while len(backward.users) == 1:
        (user,) = backward.users
        guided = user.target is aten.relu.default and len(user.users) == 1  # relu(grad) * mask
        product = next(iter(user.users)) if guided else user
        other = _other_factor(product, user if guided else backward)
        if pooled is not None and _is_mask_of(other, pool_input):
            factor = _inserted(graph, user, _ACTIVE, pooled)
        elif not guided and _plane_constant(other, backward):
            factor = other
        else:
            return
        # The factor may be computed after the backward was: the backward moves down to `user`.
        backward.update_arg(0, _inserted(graph, user, _MUL, backward.args[0], factor))
        user.prepend(backward)
        product.replace_all_uses_with(user if guided else backward)
        graph.erase_node(product)
        if guided:
            return  # nothing moves past the relu


def _inserted(graph: torch.fx.Graph, before: torch.fx.Node, target, *args) -> torch.fx.Node:
    with graph.inserting_before(before):
        return graph.call_function(target, args)


def _other_factor(node: torch.fx.Node, operand: torch.fx.Node):
    """The other operand of node when node is operand * something, else None."""
    if node.target is not _MUL or len(node.args) != 2:
        return None
    a, b = node.args
    return b if a is operand else a if b is operand else None


def _is_mask_of(node, x: torch.fx.Node) -> bool:
    return isinstance(node, torch.fx.Node) and node.target is _ACTIVE and node.args[0] is x


def _plane_constant(node, backward: torch.fx.Node) -> bool:
    """A number, or a tensor of at most the gradient's rank whose last two sizes are 1: the same factor
    over each image plane."""
    if isinstance(node, (int, float)):
        return True
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    rank = backward.meta["val"].dim()
    return isinstance(val, torch.Tensor) and (val.dim() == 0 or 2 <= val.dim() <= rank and
                                              tuple(val.shape[-2:]) == (1, 1))


def _pooled_output(indices: torch.fx.Node) -> torch.fx.Node | None:
    """The pooled values y of the max pool whose indices these are."""
    pool = indices.args[0] if indices.target is operator.getitem else None
    if pool is None:
        return None
    return next((u for u in pool.users if u.target is operator.getitem and u.args[1] == 0), None)
