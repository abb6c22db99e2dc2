"""Work that depends only on an optional input, done once at export for the input's default value.

Two inputs drive work of their own.  deeplift and the integrated gradients run the model on `baselines`
(the reference pass: DeepLIFT's reference activations, the baseline's score for the deltas); at batch 1
it costs as much as a second forward pass.  The SmoothGrad family draws its noise from `seed` (an integer
hash of every element's index), about ten forward passes' worth per image at 224x224.  Most callers keep
the file's defaults, and then that work gives the same tensors in every run.  This rewrite of the
exported ONNX graph moves the nodes that read only such an input and constants into an `If`: when the
input equals its default, the `If` returns their outputs as computed here by ONNX Runtime; otherwise
it runs them.  The file grows by the cached tensors (resnet18 at 224x224: 12 MB for deeplift's
reference activations, 9.6 MB for SmoothGrad's 16 noise draws).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_explain.core.graph import needed_nodes

CACHED_INPUTS = ("baselines", "seed")
# These stay outside the If when they read the input itself or tensors the If returns anyway, and only
# the rest of the graph reads them: on one image they cost no more than copying their outputs out of the
# If, and the file does not store them (DeepLIFT's fallback t [x' > 0], a Greater, a Cast and a Mul of
# each reference input x', would add 9 MB to resnet18's at 224x224).
_RECOMPUTED = {"Relu", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Greater", "Cast", "Mul"}


def cache_defaults(proto: onnx.ModelProto) -> onnx.ModelProto:
    """proto with the work of each of CACHED_INPUTS at its default done (see the module docstring)."""
    for name in CACHED_INPUTS:
        proto = cache_default(proto, name)
    return proto


def cache_default(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """proto with the nodes that read only input `name` and constants computed at its default (the
    initializer of that name) and moved into an If; proto itself when it has no such nodes."""
    graph = proto.graph
    default = next((numpy_helper.to_array(i) for i in graph.initializer if i.name == name), None)
    if default is None:
        return proto
    constant = _constant_tensors(graph)
    setup = [n for n in graph.node if all(o in constant for o in n.output)]
    cone = _reading_only(graph, name, constant)
    returned = _returned(graph, cone)
    if not returned:
        return proto
    types = _types(proto)
    cached = _run(proto, returned, types, name, default)
    prefix = f"default_{name}/"
    branch = helper.make_node("If", [prefix + "is_default"], returned, name=prefix + "if",
                              then_branch=_cached_branch(returned, cached, types, prefix),
                              else_branch=_computing_branch(cone, returned, types, prefix))
    moved = {id(n) for n in setup + cone}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    # The constants first: the If's branches read them from the outer scope.
    rest = [n for n in graph.node if id(n) not in moved]
    out.graph.node.extend(setup + _is_default(name, default, prefix) + [branch] + rest)
    return out


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers that are not inputs, and the outputs of nodes that read only those."""
    inputs = {i.name for i in graph.input}
    constant = {i.name for i in graph.initializer if i.name not in inputs} | {""}
    for node in graph.node:
        if all(i in constant for i in node.input):
            constant.update(node.output)
    return constant


def _reading_only(graph: onnx.GraphProto, name: str, constant: set[str]) -> list[onnx.NodeProto]:
    """The nodes that read input `name`, constants and such nodes' outputs, in graph order, but for
    those the rest of the graph runs itself (_left_outside)."""
    reached, cone = {name}, []
    for node in graph.node:
        if any(i in reached for i in node.input) and all(i in constant or i in reached for i in node.input):
            cone.append(node)
            reached.update(node.output)
    outside = _left_outside(graph, cone, {name, *constant})
    return [n for n in cone if id(n) not in outside]


def _left_outside(graph: onnx.GraphProto, cone: list[onnx.NodeProto], given: set[str]) -> set[int]:
    """ids of the _RECOMPUTED nodes of the cone that read only what the rest of the graph has (`given`:
    the input and constants; tensors the If returns anyway; other such nodes' outputs), and that no
    node staying in the cone reads."""
    available = given | set(_returned(graph, cone))
    for node in cone:
        if node.op_type in _RECOMPUTED and all(i in available for i in node.input):
            available.update(node.output)
    outside: set[int] = set()
    for node in reversed(cone):  # a node's readers come after it, so they are decided first
        readers = [r for r in cone if set(node.output) & set(r.input)]
        if (node.op_type in _RECOMPUTED and all(i in available for i in node.input)
                and all(id(r) in outside for r in readers)):
            outside.add(id(node))
    return outside


def _returned(graph: onnx.GraphProto, cone: list[onnx.NodeProto]) -> list[str]:
    """The tensors the cone makes that the rest of the graph or its outputs read."""
    in_cone = {id(n) for n in cone}
    made = {o for n in cone for o in n.output}
    read = {i for n in graph.node if id(n) not in in_cone for i in n.input} | {o.name for o in graph.output}
    return sorted(made & read)


# Initializers above this size go to shape inference as dims alone and to the cached run as feeds, so
# neither serialises the weights (vgg11_bn's are 0.5 GB, and serialising them dominated its export).
_LARGE_BYTES = 1 << 16


def _types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The type of every tensor of proto, inferred from its large initializers' dims (not their data)."""
    graph = proto.graph
    light = helper.make_graph(graph.node, graph.name, graph.input, graph.output,
                              [_dims_only(i) if _large(i) else i for i in graph.initializer])
    model = helper.make_model(light, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type for v in (*inferred.value_info, *inferred.input, *inferred.output)}


def _large(tensor: onnx.TensorProto) -> bool:
    # From the dims: len(raw_data) copies the data out, and ByteSize() is slower still.
    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize > _LARGE_BYTES


def _dims_only(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)


def _run(proto: onnx.ModelProto, names: list[str], types, name: str, value: np.ndarray) -> list[np.ndarray]:
    """The values of `names` with input `name` at `value`, in ONNX Runtime on CPU, from the nodes they
    need alone: the graph's constant setup holds every weight's transform, and most are not theirs."""
    nodes = needed_nodes(proto.graph, names, [name])
    read = {i for n in nodes for i in n.input}
    weights = [i for i in proto.graph.initializer if i.name in read and i.name != name]
    fed = {i.name: numpy_helper.to_array(i) for i in weights if _large(i)}
    inputs = [i for i in proto.graph.input if i.name == name] + [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in fed.items()]
    graph = helper.make_graph(nodes, "at_default", inputs, [helper.make_value_info(n, types[n]) for n in names],
                              [i for i in weights if i.name not in fed])
    model = helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {name: value, **fed})


def _cached_branch(names: list[str], values: list[np.ndarray], types, prefix: str) -> onnx.GraphProto:
    inner = [prefix + "cached/" + n for n in names]
    constants = [helper.make_node("Constant", [], [i], value=numpy_helper.from_array(v, i))
                 for i, v in zip(inner, values, strict=True)]
    return helper.make_graph(constants, "at_default", [],
                             [helper.make_value_info(i, types[n]) for i, n in zip(inner, names, strict=True)])


def _computing_branch(cone: list[onnx.NodeProto], names: list[str], types, prefix: str) -> onnx.GraphProto:
    """The cone itself, its tensors renamed: a subgraph may not define a name the outer graph defines."""
    renamed = {o: prefix + "computed/" + o for n in cone for o in n.output}
    nodes = []
    for node in cone:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed[o] for o in node.output]
        nodes.append(copy)
    return helper.make_graph(nodes, "as_given", [],
                             [helper.make_value_info(renamed[n], types[n]) for n in names])


def _is_default(name: str, default: np.ndarray, p: str) -> list[onnx.NodeProto]:
    """is_default = max |input - default| == 0."""
    constants = {p + "default": default, p + "zero": np.zeros((), default.dtype)}
    return [*(helper.make_node("Constant", [], [tensor], value=numpy_helper.from_array(value, tensor))
              for tensor, value in constants.items()),
            helper.make_node("Sub", [name, p + "default"], [p + "difference"]),
            helper.make_node("Abs", [p + "difference"], [p + "distance"]),
            helper.make_node("ReduceMax", [p + "distance"], [p + "largest"], keepdims=0),
            helper.make_node("Equal", [p + "largest", p + "zero"], [p + "is_default"])]
