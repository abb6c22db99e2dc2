"""The traced graph's exact rewrites: each leaves the values unchanged (ties included) and fires where it
should."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from onnx_explain.exporters.decompositions import aten
from onnx_explain.exporters.rewrites import factors_before_pool_routing
from onnx_explain.exporters.translations import active

POOL = ([3, 3], [2, 2], [1, 1], [1, 1], False)


def _relu_output_with_ties() -> torch.Tensor:
    """A ReLU's output with flat patches (equal maxima within windows) and zero regions."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 4, 12, 12))
    x[:, :, 2:8, 3:9] = 0.5
    x[:, 1, 6:, :] = 0.0
    return x


def _stems():
    """Backward passes through ReLU -> max pool, as the traced graph holds them: (function, factor moved)."""
    def routed(x, g):
        _, indices = aten.max_pool2d_with_indices(x, *POOL[:4], POOL[4])
        return aten.max_pool2d_with_indices_backward(g, x, *POOL, indices)

    plane = torch.tensor([1.5, -2.0, 0.25, 3.0]).reshape(4, 1, 1)
    column = torch.arange(12.0).reshape(1, 1, 1, 12)
    return {
        "mask": (lambda x, g: routed(x, g) * active(x), True),
        "mask then plane scale": (lambda x, g: routed(x, g) * active(x) * plane, True),
        "guided": (lambda x, g: torch.relu(routed(x, g)) * active(x), True),
        "per-column factor stays": (lambda x, g: routed(x, g) * column, False),
    }


@pytest.mark.parametrize("name", list(_stems()))
def test_factors_before_pool_routing_is_exact(name):
    f, moved = _stems()[name]
    x = _relu_output_with_ties()
    g = torch.randn(2, 4, 6, 6)
    gm = make_fx(f)(x, g)
    want = gm(x, g)
    factors_before_pool_routing(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    torch.testing.assert_close(gm(x, g), want, rtol=1e-6, atol=1e-6)
    backward = next(n for n in gm.graph.nodes if n.target is aten.max_pool2d_with_indices_backward.default)
    (after,) = backward.users
    if after.target is aten.relu.default:  # guided: the relu stays after the routing
        (after,) = after.users
    assert (after.op == "output") == moved, after.target
