"""Graphs at ONNX opset 18, for ONNX Runtime's CUDA provider.

torch.onnx writes opset 20, where ReduceMax and ReduceMin have version 20 and Equal version 19.  ONNX
Runtime's CUDA kernels for them are registered as "18+" and "13+", and a kernel registered without an
end version serves only nodes of exactly that version (VerifyVersion in its kernel registry): at opset
20 those nodes fall back to the CPU, with copies across the bus on every run.  Exported files and the
graphs built around a user's model use nothing that opsets 19 and 20 added (string comparisons, float8
casts), so they are converted to opset 18 with ONNX's version converter; the outputs are bit for bit
the same.
"""

from __future__ import annotations

import logging
import math

import onnx
from onnx import helper, version_converter

from onnx_explain.core.errors import first_line

TARGET = 18

log = logging.getLogger(__name__)


def at_opset_18(proto: onnx.ModelProto) -> onnx.ModelProto:
    """proto converted to opset 18 (as it is when it is already at 18, or above 18 when the converter
    cannot convert one of its ops, which is logged).

    Raises:
        ValueError: a graph below opset 18 that the converter cannot bring up to it.
    """
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), TARGET)
    if version == TARGET:
        return proto
    if version > TARGET:
        proto = _without_gelu(proto)
    try:
        converted = version_converter.convert_version(proto, TARGET)
    except Exception as e:  # noqa: BLE001 -- the converter raises its own types; the opset-20 file still works
        reason = first_line(e)
        if version < TARGET:
            raise ValueError(f"the model uses ONNX opset {version}; converting it to opset {TARGET} failed "
                             f"({reason}); re-export it at opset {TARGET} or later") from e
        log.info("keeping opset %d: ONNX's version converter could not convert the graph to %d (%s)", version,
                 TARGET, reason)
        return proto
    _drop_saturate(converted.graph)  # Cast's saturate (opset 19, for float8) is left behind by the converter
    _keep_node_metadata(proto.graph, converted.graph)
    for function in converted.functions:
        _drop_saturate(function)
    return converted


def _drop_saturate(graph) -> None:
    for node in graph.node:
        if node.op_type in ("Cast", "CastLike"):
            kept = [a for a in node.attribute if a.name != "saturate"]
            del node.attribute[:]
            node.attribute.extend(kept)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _drop_saturate(attribute.g)


def _keep_node_metadata(original, converted) -> None:
    """The converter drops nodes' metadata_props, where torch.onnx records each node's module (the
    activation CAMs find a layer by its module name): copied back by node name."""
    kept = {n.name: n.metadata_props for n in original.node if n.name and n.metadata_props}
    for node in converted.node:
        if node.name in kept and not node.metadata_props:
            node.metadata_props.extend(kept[node.name])


def _without_gelu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Gelu (opset 20, which the converter cannot take down) written as its definition in ops of opset 18:
    0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation; ONNX Runtime fuses the pattern back into its
    own Gelu kernel (CPU and CUDA)."""
    if not any(n.op_type == "Gelu" for n in proto.graph.node):
        return proto
    expanded = onnx.ModelProto()
    expanded.CopyFrom(proto)
    nodes = []
    for node in expanded.graph.node:
        nodes.extend(_gelu_definition(node) if node.op_type == "Gelu" else [node])
    del expanded.graph.node[:]
    expanded.graph.node.extend(nodes)
    return expanded


def _gelu_definition(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, y, stem = node.input[0], node.output[0], (node.name or node.output[0]) + "_gelu"
    approximate = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
    made = []

    def const(name: str, value: float) -> str:
        made.append(helper.make_node("Constant", [], [f"{stem}_{name}"], value_float=value))
        return f"{stem}_{name}"

    def op(kind: str, *inputs: str) -> str:
        out = f"{stem}_{len(made)}"
        made.append(helper.make_node(kind, list(inputs), [out]))
        return out

    if approximate == "tanh":  # tanh(sqrt(2 / pi) (x + 0.044715 x^3))
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Mul", const("k", math.sqrt(2 / math.pi)), op("Add", x, op("Mul", const("c", 0.044715), cube)))
        shape = op("Tanh", inner)
    else:
        shape = op("Erf", op("Div", x, const("root2", math.sqrt(2))))
    half = op("Mul", const("half", 0.5), x)
    made.append(helper.make_node("Mul", [half, op("Add", const("one", 1.0), shape)], [y]))
    return made
