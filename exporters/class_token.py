"""Running a transformer's last layers only on the token its head reads.

A vision transformer's head reads one token (torchvision's `x[:, 0]`, the class token), yet its last
block's attention output, MLP and the final norm run on every token, in the forward pass and again in
the traced backward pass.  Those layers act on each token alone, so the token can be taken before them
instead of after: the last attention then runs one query against every key, and everything after it
runs on one token.  The logits are the same; on vit_b_16 this is most of the last block, in both passes.

The model is traced with torch.fx; a model that fx cannot trace, or whose head reads no single token,
is used as it is.  Modules whose output a method taps (CAM layers, feature targets) stay whole: fx keeps
them as single calls, so their hooks still see every token.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

log = logging.getLogger(__name__)

# Modules that act on each token alone (on the last axis, or element by element).
_TOKENWISE = (nn.LayerNorm, nn.Linear, nn.Dropout, nn.Identity, nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid)
_ELEMENTWISE = {operator.add, operator.mul, torch.add, torch.mul}
_ALL = slice(None)


def on_read_token(model: nn.Module, input_shape: tuple[int, ...], whole: Iterable[str]) -> nn.Module:
    """`model`, or an fx copy of it (sharing its modules and parameters) whose layers between the last
    attention and the head run only on the token the head reads.  `whole`: module names to keep whole."""
    try:
        return _pruned(model, input_shape, set(whole)) or model
    except Exception as e:  # noqa: BLE001 -- fx cannot trace every model; such a model is exported as it is
        log.info("exporting %s whole: torch.fx could not trace it to run its last layers on the read token (%s)",
                 type(model).__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return model


def _pruned(model: nn.Module, input_shape: tuple[int, ...], whole: set[str]) -> fx.GraphModule | None:
    gm = fx.GraphModule(model, _Tracer(whole).trace(model))
    reads = [n for n in gm.graph.nodes if _token_read(n) is not None]
    if len({_token_read(n) for n in reads}) != 1:  # no token read, or several different ones
        return None
    example = torch.randn(2, *input_shape)
    with torch.no_grad():
        want = ShapeProp(gm).propagate(example)  # the model's output, before the rewrite
    gm.graph.eliminate_dead_code()  # unread outputs (attention's weights) would keep their producers whole
    if not _Pruner(gm, whole, _token_read(reads[0])).prune(reads):
        return None
    gm.recompile()
    with torch.no_grad():
        got = gm(example)
    # a rewrite this module got wrong must cost speed, never a map
    same = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    return gm if same else None


class _Tracer(fx.Tracer):
    def __init__(self, whole: set[str]) -> None:
        super().__init__()
        self.whole = whole

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.whole or super().is_leaf_module(m, qualified_name)


def _token_read(node: fx.Node) -> int | None:
    """k if node is x[:, k] with an integer k."""
    if node.op == "call_function" and node.target is operator.getitem:
        index = node.args[1]
        if isinstance(index, tuple) and len(index) == 2 and index[0] == _ALL and isinstance(index[1], int):
            return index[1]
    return None


class _Pruner:
    """Finds the nodes whose every reader needs only token k of them, and runs the token-wise ones among
    them on that token alone."""

    def __init__(self, gm: fx.GraphModule, whole: set[str], k: int) -> None:
        self.graph, self.whole, self.k = gm.graph, whole, k
        self.modules = dict(gm.named_modules())

    def prune(self, reads: list[fx.Node]) -> bool:
        needed = self._token_only()
        moved = [n for n in self.graph.nodes if n in needed and self._token_positions(n) is not None]
        if not moved:
            return False
        slices: dict[fx.Node, fx.Node] = {}
        for node in moved:
            args = list(node.args)
            for i in self._token_positions(node):
                if args[i] not in needed or self._token_positions(args[i]) is None:  # stays whole: sliced
                    if args[i] not in slices:
                        slices[args[i]] = self._slice(args[i])
                    args[i] = slices[args[i]]
            node.args = tuple(args)
        for read in reads:
            if read.args[0] in moved:
                read.args = (read.args[0], (_ALL, 0))
        return True

    def _token_only(self) -> set[fx.Node]:
        """The nodes all of whose readers read token k alone, or are token-wise in them and in this set."""
        needed: set[fx.Node] = set()
        for node in reversed(self.graph.nodes):  # readers before what they read
            if node.users and all(self._reads_token(user, node, needed) for user in node.users):
                needed.add(node)
        return needed

    def _reads_token(self, user: fx.Node, node: fx.Node, needed: set[fx.Node]) -> bool:
        if _token_read(user) == self.k and user.args[0] is node:
            return True
        positions = self._token_positions(user)
        return (user in needed and positions is not None and node not in user.kwargs.values()
                and all(i in positions for i, a in enumerate(user.args) if a is node))

    def _token_positions(self, node: fx.Node) -> list[int] | None:
        """The argument positions whose token axis is the node's token axis, if node acts on each token
        alone; None otherwise."""
        module = self.modules.get(node.target) if node.op == "call_module" and node.target not in self.whole else None
        if isinstance(module, _TOKENWISE) and len(node.args) == 1 and not node.kwargs and _rank(node) == 3 \
                and len(getattr(module, "normalized_shape", ())) <= 1:  # a layer norm over the channels alone
            return [0]
        if isinstance(module, nn.MultiheadAttention) and self._lone_output(node):
            return [0]  # the query; the keys and values stay whole
        if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0 \
                and isinstance(node.args[0], fx.Node) and self._token_positions(node.args[0]) is not None:
            return [0]  # attention's output, from the (output, weights) pair
        if node.op == "call_function" and node.target in _ELEMENTWISE and not node.kwargs and _rank(node) == 3 \
                and all(_spares_tokens(a) for a in node.args):
            tokens = node.meta["tensor_meta"].shape[1]
            return [i for i, a in enumerate(node.args) if _rank(a) == 3 and a.meta["tensor_meta"].shape[1] == tokens]
        return None

    def _lone_output(self, node: fx.Node) -> bool:
        """A batch-first attention called as attention(q, k, v) whose weights nobody reads."""
        module = self.modules[node.target]
        return (module.batch_first and len(node.args) == 3 and set(node.kwargs) <= {"need_weights"}
                and all(_token_read(u) is None and u.target is operator.getitem and (u.args[1] == 0 or not u.users)
                        for u in node.users))

    def _slice(self, node: fx.Node) -> fx.Node:
        with self.graph.inserting_after(node):
            return self.graph.call_function(operator.getitem, (node, (_ALL, slice(self.k, self.k + 1))))


def _spares_tokens(arg) -> bool:
    """An element-wise operand whose axes line up with [N, T, C] so that slicing the token axis (of it,
    or of the output where it broadcasts) commutes with the op: a number, a vector over the channels,
    [1, C], or any [., ., .]."""
    if not isinstance(arg, fx.Node):
        return isinstance(arg, (int, float))
    rank = _rank(arg)
    return rank in (0, 1, 3) or (rank == 2 and arg.meta["tensor_meta"].shape[0] == 1)


def _rank(node) -> int:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1
