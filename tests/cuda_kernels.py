"""Which nodes of a graph have a CUDA kernel in ONNX Runtime: a static check against the CUDA section
of ONNX Runtime's operator-kernel table (tests/data/ort-cuda-kernels.json, with the commit it came
from).  ONNX Runtime places a node without one on the CPU, silently, and copies tensors across."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.inliner
from onnx import defs

TABLE = json.loads((Path(__file__).parent / "data" / "ort-cuda-kernels.json").read_text())
KERNELS: dict[str, list[dict]] = TABLE["kernels"]
CPU_FUNCTION_OPS: dict[str, list[dict]] = TABLE["cpu_function_op_kernels"]
SOURCE: str = TABLE["source"]
TYPE_NAMES = {v: k for k, v in {
    "float": onnx.TensorProto.FLOAT, "double": onnx.TensorProto.DOUBLE, "float16": onnx.TensorProto.FLOAT16,
    "bfloat16": onnx.TensorProto.BFLOAT16, "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32,
    "int16": onnx.TensorProto.INT16, "int8": onnx.TensorProto.INT8, "uint64": onnx.TensorProto.UINT64,
    "uint32": onnx.TensorProto.UINT32, "uint16": onnx.TensorProto.UINT16, "uint8": onnx.TensorProto.UINT8,
    "bool": onnx.TensorProto.BOOL}.items()}


@dataclass(frozen=True)
class Fallback:
    """A node ONNX Runtime would run on the CPU: its op, the opset version its schema comes from, and
    why (no kernel for that version, or none for its input types)."""

    op: str
    since: int
    types: tuple[str, ...]
    reason: str


def cpu_fallbacks(model: onnx.ModelProto) -> list[Fallback]:
    """Every node (Loop and If bodies included, local functions inlined) without a CUDA kernel."""
    model = onnx.inliner.inline_local_functions(model)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    typed = onnx.shape_inference.infer_shapes(model)
    types = _types(typed.graph)
    folded = _constant(typed.graph)
    found = []
    for node in _nodes(typed.graph):
        if node.op_type == "Constant" or (node.input and all(i in folded for i in node.input if i)):
            continue  # ONNX Runtime folds constants at load, on the CPU, before placing anything
        domain = node.domain or "ai.onnx"
        if domain != "ai.onnx":
            found.append(Fallback(f"{domain}:{node.op_type}", 0, (), "custom domain"))
            continue
        schema = defs.get_schema(node.op_type, opsets["ai.onnx"], "")
        rows = KERNELS.get(f"ai.onnx:{node.op_type}", [])
        since = schema.since_version
        matching = [r for r in rows if _covers(r, since)]
        inputs = tuple(TYPE_NAMES.get(types.get(name), "?") for name in node.input if name)
        inlined = (schema.has_function or schema.has_context_dependent_function) and \
            f"ai.onnx:{node.op_type}" not in CPU_FUNCTION_OPS
        if not matching and inlined:
            continue  # no kernel anywhere: ONNX Runtime runs the op's function body, whose ops it places
        if not matching:
            found.append(Fallback(node.op_type, since, inputs, "no kernel for this opset version"))
        elif not any(_types_fit(schema, node, r["types"], types) for r in matching):
            found.append(Fallback(node.op_type, since, inputs, "no kernel for these input types"))
    return found


def _covers(row: dict, since: int) -> bool:
    """A row "a+" covers only since_version a (ONNX Runtime's VerifyVersion); "a-b" covers a..b."""
    return row["since"] == since if row["until"] is None else row["since"] <= since <= row["until"]


def _types_fit(schema, node: onnx.NodeProto, allowed: dict[str, list[str]], types: dict[str, int]) -> bool:
    for formal, name in zip(schema.inputs, node.input, strict=False):
        if not name or formal.type_str not in allowed:
            continue
        if TYPE_NAMES.get(types.get(name), "?") not in allowed[formal.type_str]:
            return False
    return True


def _constant(graph: onnx.GraphProto) -> set[str]:
    """The main graph's tensors computed from initializers and Constant nodes alone."""
    constant = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input if i)):
            constant.update(node.output)
    return constant


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    found = {}
    for value in (*graph.input, *graph.output, *graph.value_info):
        found[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        found[tensor.name] = tensor.data_type
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found.update(_types(attribute.g))
            if node.op_type == "Constant" and attribute.name == "value":
                found[node.output[0]] = attribute.t.data_type
    return found


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
