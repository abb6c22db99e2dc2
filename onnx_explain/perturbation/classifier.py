"""Any ONNX image classifier, as the pure-inference methods see it: its image input, layout, batch
size, score tensor and the intermediate tensors a CAM can be computed at."""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx
from onnx import shape_inference

from onnx_explain.core.opset import at_opset_18

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: built graphs are cached per object
class Classifier:
    """An ONNX classifier with one float image input [N, C, H, W] or [N, H, W, C] and one [N, classes]
    output.  `scores` is the pre-softmax tensor: the output itself, or the input of a final Softmax
    (whose output is then `probabilities`)."""

    model: onnx.ModelProto
    image: str
    layout: str
    image_shape: tuple[int, int, int]  # one image, in the model's layout
    batch: int | None  # a batch size fixed in the file, or None when it is dynamic
    scores: str
    probabilities: str | None
    num_classes: int | None

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "NCHW" else 3

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        shape = self.image_shape
        return (shape[1], shape[2]) if self.layout == "NCHW" else (shape[0], shape[1])

    @property
    def channels(self) -> int:
        return self.image_shape[self.channel_axis - 1]


def classifier(model: str | Path | onnx.ModelProto | Classifier, *, layout: str | None = None,
               output: str | None = None) -> Classifier:
    """Read an ONNX classifier (a path or a ModelProto) for occlusion, RISE and the activation CAMs.

    Args:
        layout: "NCHW" or "NHWC"; None reads it from the image input (a size of 1, 3 or 4 on one side).
        output: the classifier output's name when the model has several outputs of rank 2.

    Raises:
        ValueError: not a readable ONNX model, not one float image input of rank 4 with fixed C, H, W,
            no [N, classes] output, or a layout that cannot be told from the shape.
    """
    if isinstance(model, Classifier):
        return model
    if isinstance(model, onnx.ModelProto):
        return _read(model, layout, output)
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    return _read_file(str(path.resolve()), path.stat().st_mtime_ns, layout, output)


@lru_cache(maxsize=4)
def _read_file(path: str, mtime: int, layout: str | None, output: str | None) -> Classifier:
    """One Classifier per file version, so repeated calls on a path reuse its built graphs."""
    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise ValueError(f"{path} is not a valid ONNX file: {e}") from e
    return _read(proto, layout, output)


def _read(proto: onnx.ModelProto, layout: str | None, output: str | None) -> Classifier:
    proto = _checked(proto)
    image, dims = _image_input(proto)
    layout = _layout(dims, layout)
    out = _output(proto, output)
    scores, probabilities = _score_tensors(proto, out.name)
    out_dims = _dims(out)
    num_classes = out_dims[1] if len(out_dims) == 2 and isinstance(out_dims[1], int) else None
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return Classifier(proto, image, layout, tuple(dims[1:]), batch, scores, probabilities, num_classes)


def _checked(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"the ONNX model is invalid: {str(e).splitlines()[0]}") from e
    return at_opset_18(proto)  # the graphs built around it are written to opset 18, where CUDA has every kernel


def _dims(v: onnx.ValueInfoProto) -> list[int | str | None]:
    if not v.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]


def _image_input(proto: onnx.ModelProto) -> tuple[str, list]:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    described = [f"{i.name} {onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)} {_dims(i)}"
                 for i in inputs]
    if len(inputs) != 1:
        raise ValueError(f"expected a classifier with one image input, the model has {len(inputs)}: {described}")
    image = inputs[0]
    dims = _dims(image)
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise ValueError(f"expected one float32 image input of rank 4 (NCHW or NHWC), got {described[0]}")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ValueError(f"the image input {image.name} must have fixed channel, height and width sizes, got "
                         f"{dims}; fix them with onnxruntime.tools.make_dynamic_shape_fixed")
    return image.name, dims


def _layout(dims: list, layout: str | None) -> str:
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        return layout
    channels_first, channels_last = dims[1] in (1, 3, 4), dims[3] in (1, 3, 4)
    if channels_first != channels_last:
        return "NCHW" if channels_first else "NHWC"
    raise ValueError(f"cannot tell whether the image input {dims} is NCHW or NHWC; pass layout='NCHW' or 'NHWC'")


def _output(proto: onnx.ModelProto, output: str | None) -> onnx.ValueInfoProto:
    outputs = proto.graph.output
    if output is not None:
        chosen = [o for o in outputs if o.name == output]
        if not chosen:
            raise ValueError(f"the model has no output {output!r}; its outputs are {[o.name for o in outputs]}")
    else:
        chosen = [o for o in outputs if len(_dims(o)) in (0, 2)] if len(outputs) > 1 else list(outputs)
        if len(chosen) != 1:
            listed = [f"{o.name} {_dims(o)}" for o in outputs]
            raise ValueError(f"expected one [N, classes] output, found {listed}; pass output=NAME")
    out = chosen[0]
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(_dims(out)) not in (0, 2):
        raise ValueError(f"the classifier output {out.name} must be float32 [N, classes], got {_dims(out)}")
    return out


def _score_tensors(proto: onnx.ModelProto, output: str) -> tuple[str, str | None]:
    """(pre-softmax scores, probabilities or None): a final Softmax is looked through."""
    producer = next((n for n in proto.graph.node if output in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        return producer.input[0], output
    return output, None


@dataclass(frozen=True)
class Tensor:
    """An intermediate tensor a CAM can be computed at."""

    name: str
    shape: tuple
    op: str
    module: str  # the torch module that made it, when the exporter recorded one, else ""


def layer_tensors(model: str | Path | onnx.ModelProto | Classifier) -> list[Tensor]:
    """Every rank-4 float tensor inside the model (not the input), with its shape: the candidates for
    the activation CAMs' `layer`, in graph order.  `model` is anything classifier() takes."""
    model = classifier(model)
    inferred = inferred_graph(model)
    shapes = {v.name: _dims(v) for v in (*inferred.value_info, *inferred.output)}
    found = []
    for node in model.model.graph.node:
        for out in node.output:
            dims = shapes.get(out, [])
            if len(dims) == 4 and out != model.image:
                found.append(Tensor(out, tuple(dims), node.op_type, _module(node)))
    return found


@lru_cache(maxsize=8)
def inferred_graph(model: Classifier) -> onnx.GraphProto:
    """The model's graph with every shape ONNX's shape inference reaches, once per classifier."""
    return shape_inference.infer_shapes(model.model).graph


def tensor_shape(model: Classifier, name: str) -> tuple | None:
    """The inferred shape of one of the model's tensors (dims are ints, names or None), or None when
    shape inference does not reach it."""
    inferred = inferred_graph(model)
    found = next((v for v in (*inferred.value_info, *inferred.output) if v.name == name), None)
    return None if found is None or not found.type.tensor_type.HasField("shape") else tuple(_dims(found))


def _scopes(node: onnx.NodeProto) -> list[str]:
    """The torch module path torch.onnx.export recorded for a node ([] when none): ['', 'layer4', ..., op]."""
    scopes = next((m.value for m in node.metadata_props if m.key == "pkg.torch.onnx.name_scopes"), None)
    return [] if scopes is None else ast.literal_eval(scopes)


def _module(node: onnx.NodeProto) -> str:
    names = _scopes(node)
    return names[-2] if len(names) >= 2 else ""


def resolve_layer(model: Classifier, layer: str) -> str:
    """A tensor name, or a torch module name recorded by torch.onnx.export (the tensor that leaves it)."""
    graph = model.model.graph
    produced = {o for n in graph.node for o in n.output}
    if layer in produced and layer != model.image:
        return layer
    inside = [n for n in graph.node if _in_module(n, layer)]
    outside_reads = {i for n in graph.node if not _in_module(n, layer) for i in n.input}
    outside_reads |= {o.name for o in graph.output}
    leaving = list(dict.fromkeys(o for n in inside for o in n.output if o in outside_reads))
    if len(leaving) == 1:
        return leaving[0]
    candidates = [t.name for t in layer_tensors(model)] + sorted({t.module for t in layer_tensors(model)} - {""})
    if len(leaving) > 1:
        raise ValueError(f"module {layer!r} has several outputs {leaving}; name one of these tensors")
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    raise ValueError(f"no tensor or module named {layer!r} in the model; close: {close or candidates[-5:]} "
                     "(onnx_explain.layer_tensors lists them all with their shapes)")


def _in_module(node: onnx.NodeProto, module: str) -> bool:
    return module in _scopes(node)
