"""A Triton Inference Server model repository for an exported explanation graph.

Triton's ONNX Runtime backend batches requests (max_batch_size > 0) only when every input and output is
batch-major with a dynamic first dimension and no input has an initializer default: it refuses
"optional input ... for models that support batching".  An exported file's optional inputs
(counterfactual, baselines, seed, noise_std, lrp_epsilon) are such defaults, so the batching file fixes
them at their export values: they become constants of the graph, and ONNX Runtime folds the work that
depends only on them (onnx_explain.exporters.default_inputs) as before.  Without batching
(max_batch_size 0) the file is served as it is, its optional inputs declared optional, so each request
may set them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnx_explain.core.metadata import KEY, GraphInfo, read_info

TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
                onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT64: "TYPE_INT64",
                onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL",
                onnx.TensorProto.UINT8: "TYPE_UINT8"}
LABELS = "labels.txt"


@dataclass(frozen=True)
class Repository:
    """What write_repository wrote: the model's folder, its config.pbtxt, model file and labels file."""

    folder: Path
    config: Path
    model: Path
    labels: Path


def batch_major(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file with its optional inputs fixed at their defaults (the initializers stay, as constants):
    every remaining input and every output has a dynamic first dimension, as Triton's batcher needs.

    Raises:
        ValueError: an input or output whose first dimension is not dynamic.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    defaults = {i.name for i in fixed.graph.initializer}
    kept = [i for i in fixed.graph.input if i.name not in defaults]
    del fixed.graph.input[:]
    fixed.graph.input.extend(kept)
    for value in (*fixed.graph.input, *fixed.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ValueError(f"{value.name} is not batch-major (shape {_dims(value)}): Triton batches only "
                             "tensors whose first dimension is dynamic")
    return fixed


def write_repository(model_path: str | Path, repository: str | Path, *, name: str | None = None,
                     max_batch_size: int = 32, instances: int = 1, gpu: bool = False,
                     max_queue_delay_us: int = 500) -> Repository:
    """Write REPOSITORY/NAME/config.pbtxt, REPOSITORY/NAME/1/model.onnx and REPOSITORY/NAME/labels.txt
    for an exported explanation graph, ready for `tritonserver --model-repository REPOSITORY`.

    Args:
        model_path: a file written by export_explainer.
        repository: the model repository folder (created when missing).
        name: the model's name in Triton; default: the file's stem.
        max_batch_size: the largest batch Triton's dynamic batcher forms; 0 serves the file without
            batching, with its optional inputs settable per request.
        instances: model instances (ONNX Runtime sessions) per device.
        gpu: instance_group KIND_GPU (else KIND_CPU).
        max_queue_delay_us: how long the batcher waits to fill a batch.

    Returns:
        The paths written.

    Raises:
        ValueError: not an explanation graph, a bad setting, or a name Triton cannot use.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"no explanation graph at {model_path}")
    name = name or model_path.stem
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"the model name must be a plain folder name, got {name!r}")
    for what, value, low in (("max_batch_size", max_batch_size, 0), ("instances", instances, 1),
                             ("max_queue_delay_us", max_queue_delay_us, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    try:
        model = onnx.load(str(model_path))
    except Exception as e:  # protobuf raises its own DecodeError types
        raise ValueError(f"{model_path} is not a valid ONNX file: {e}") from e
    info = read_info(model, str(model_path))
    served = batch_major(model) if max_batch_size > 0 else model
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    written = Repository(folder, folder / "config.pbtxt", folder / "1" / "model.onnx", folder / LABELS)
    onnx.save_model(served, str(written.model))
    written.labels.write_text("".join(f"{c}\n" for c in info.class_names))
    written.config.write_text(config_text(served, info, name, max_batch_size, instances, gpu, max_queue_delay_us))
    return written


def config_text(model: onnx.ModelProto, info: GraphInfo, name: str, max_batch_size: int, instances: int,
                gpu: bool, max_queue_delay_us: int) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig)."""
    batching = max_batch_size > 0
    defaults = {i.name for i in model.graph.initializer}
    inputs = [_tensor(v, batching, optional=v.name in defaults) for v in model.graph.input]
    outputs = [_tensor(v, batching, labels=v.name == "logits") for v in model.graph.output]
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
             *(f"input {block}" for block in inputs), *(f"output {block}" for block in outputs)]
    if batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines.append(f"instance_group [{{ count: {instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }}]")
    lines.append(f"parameters {{ key: {json.dumps(KEY)} value: {{ string_value: {json.dumps(info.to_json())} }} }}")
    return "\n".join(lines) + "\n"


def _tensor(value: onnx.ValueInfoProto, batching: bool, optional: bool = False, labels: bool = False) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise ValueError(f"{value.name} has ONNX type {onnx.TensorProto.DataType.Name(elem)}, which this writer "
                         f"does not map to Triton (it maps {sorted(TRITON_TYPES.values())})")
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in _dims(value)]
    if batching:
        dims = dims[1:]
    fields = [f'name: "{value.name}"', f"data_type: {TRITON_TYPES[elem]}"]
    if batching and not dims:  # one value per image: Triton's [1], reshaped to the model's [N]
        fields += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    else:
        fields.append(f"dims: [ {', '.join(map(str, dims))} ]")
    if optional:
        fields.append("optional: true")
    if labels:
        fields.append(f'label_filename: "{LABELS}"')
    return "{ " + " ".join(fields) + " }"


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
