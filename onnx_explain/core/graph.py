"""A small ONNX graph builder, and inlining of a user's model into a graph built with it.

The pure-inference methods (occlusion, RISE, the activation CAMs) are graphs wrapped around a model
that came from anywhere, so they are written with onnx.helper, not torch.  Names are unique across a
builder and its Loop bodies (ONNX forbids a subgraph to shadow an outer name).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18  # the ops here are written to opset 18's signatures (reduction axes as inputs)


class Builder:
    """Appends nodes and constants; `op` returns the name of its output (a list for several)."""

    def __init__(self, counter: itertools.count | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = counter if counter is not None else itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}__{next(self._counter)}"

    def child(self) -> Builder:
        """A builder for a subgraph body, drawing names from the same counter."""
        return Builder(self._counter)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def named(self, tensor: str, name: str) -> str:
        """`tensor` under a chosen name (for graph outputs)."""
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=self.fresh("Identity")))
        return name

    def const(self, value, dtype=np.float32, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64, "ints")

    def graph(self, name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.initializers)



def value(name: str, dtype: int, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
    """A typed graph input or output; shape None leaves the rank open."""
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def inline(b: Builder, graph: onnx.GraphProto, bindings: Mapping[str, str], outputs: Sequence[str],
           prefix: str) -> list[str]:
    """Copy into `b` the nodes of `graph` that compute `outputs` from `bindings` (graph tensor -> builder
    tensor), every other name prefixed.  Binding an inner tensor cuts the model there: only the nodes
    between the bound tensors and the outputs are copied.  Initializers are copied into `b`, so a Loop
    body holds the weights as its own constants (ONNX Runtime's layout optimisations only see those)."""
    nodes, reached = _needed(graph, outputs, bindings)
    unbound = sorted(reached - set(bindings))
    if unbound:
        raise ValueError(f"the model needs its input(s) {unbound} here, and none was given")

    def rename(name: str) -> str:
        return bindings.get(name) or (name and f"{prefix}/{name}")

    read = {i for n in nodes for i in (*n.input, *outer_names(n))} | set(outputs)
    for t in graph.initializer:
        if t.name in read and t.name not in bindings:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = rename(t.name)
            b.initializers.append(copy)
    b.nodes.extend(_renamed(node, rename) for node in nodes)
    return [rename(o) for o in outputs]


def needed_inputs(graph: onnx.GraphProto, outputs: Sequence[str], bound: Sequence[str]) -> set[str]:
    """The graph inputs that computing `outputs` reads, when the tensors in `bound` are given."""
    return _needed(graph, outputs, bound)[1]


def needed_nodes(graph: onnx.GraphProto, outputs: Sequence[str], bound: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes that computing `outputs` runs, when the tensors in `bound` are given, in graph order."""
    return _needed(graph, outputs, bound)[0]


def _needed(graph: onnx.GraphProto, outputs: Sequence[str], bound) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes between the bound tensors and the outputs, in graph order, and the graph inputs reached."""
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    initializers = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - initializers
    taken: set[int] = set()
    reached: set[str] = set()
    stack, seen = list(outputs), set()
    while stack:
        name = stack.pop()
        if not name or name in seen or name in bound:
            continue
        seen.add(name)
        if name in inputs:
            reached.add(name)
        elif name in producers and producers[name] not in taken:
            node = graph.node[producers[name]]
            taken.add(producers[name])
            stack.extend((*node.input, *outer_names(node)))
    return [graph.node[i] for i in sorted(taken)], reached


def outer_names(node: onnx.NodeProto) -> list[str]:
    """Names that the subgraphs of a node (If, Loop, Scan) read from around them."""
    names = []
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            local |= {o for n in g.node for o in n.output}
            names += [i for n in g.node for i in (*n.input, *outer_names(n)) if i and i not in local]
    return names


def _renamed(node: onnx.NodeProto, rename: Callable[[str], str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)

    def fix(n: onnx.NodeProto) -> None:
        n.name = rename(n.name or n.output[0])
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
        for attr in n.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for v in (*g.input, *g.output, *g.value_info):
                    v.name = rename(v.name)
                for t in g.initializer:
                    t.name = rename(t.name)
                for inner in g.node:
                    fix(inner)

    fix(copy)
    return copy
