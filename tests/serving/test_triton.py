"""Triton model repositories: config.pbtxt parsed with Triton's own schema (tritonclient's
model_config_pb2) and checked against the ONNX file as the ONNX Runtime backend checks it at load."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from onnx_explain import Explainer
from onnx_explain.cli import main
from onnx_explain.serving.triton import write_repository

ONNX_TYPES = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_INT64": onnx.TensorProto.INT64,
              "TYPE_BOOL": onnx.TensorProto.BOOL}


def parsed(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def check_like_the_backend(config, model: onnx.ModelProto) -> None:
    """What onnxruntime_backend's ValidateInputs / ValidateOutputs require of a config and its model."""
    batching = config.max_batch_size > 0
    defaults = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    assert {i.name for i in config.input} == set(inputs), "every graph input is declared"
    assert {o.name for o in config.output} == set(outputs), "every graph output is declared"
    for declared in (*config.input, *config.output):
        value = inputs.get(declared.name) or outputs[declared.name]
        assert ONNX_TYPES[model_config_pb2.DataType.Name(declared.data_type)] == value.type.tensor_type.elem_type
        shape = dims(value)
        full = list(declared.reshape.shape) if declared.HasField("reshape") else list(declared.dims)
        if batching:
            assert shape[0] == -1, f"{declared.name}: the first dimension must be dynamic when batching"
            assert full == shape[1:], f"{declared.name}: dims {full} against the model's {shape}"
        else:
            assert full == shape, f"{declared.name}: dims {full} against the model's {shape}"
    for declared in config.input:
        if batching:
            assert not declared.optional and declared.name not in defaults, "no optional inputs when batching"
        else:
            assert declared.optional == (declared.name in defaults)


@pytest.mark.parametrize("max_batch_size", [32, 0])
def test_repository_matches_its_model(exported, tmp_path, max_batch_size):
    e = exported("shapenet")
    written = write_repository(e.path, tmp_path / "repo", max_batch_size=max_batch_size, instances=2, gpu=True)
    assert written.folder == tmp_path / "repo" / "shapenet" and written.model == written.folder / "1" / "model.onnx"
    config = parsed(written.config)
    assert config.name == "shapenet" and config.backend == "onnxruntime" and config.max_batch_size == max_batch_size
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 2
    assert config.HasField("dynamic_batching") == (max_batch_size > 0)
    logits = next(o for o in config.output if o.name == "logits")
    assert logits.label_filename == "labels.txt"
    assert written.labels.read_text().splitlines() == list(e.info.class_names)
    assert json.loads(config.parameters["onnx_explain"].string_value)["maps"]
    check_like_the_backend(config, onnx.load(str(written.model)))


def test_batching_file_fixes_the_options_and_explains_the_same(exported, tmp_path):
    e = exported("shapenet")
    written = write_repository(e.path, tmp_path / "repo", name="shapes")
    served = Explainer(written.model, providers="cpu")
    assert served.inputs == {"images", "targets"}
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    got, want = served.explain(x, ["gradcam", "smoothgrad", "deeplift"]), e.explainer.explain(
        x, ["gradcam", "smoothgrad", "deeplift"])
    for key, found in want.maps.items():
        np.testing.assert_array_equal(got.maps[key].heatmap, found.heatmap)
    with pytest.raises(ValueError, match="has no counterfactual input"):
        served.explain(x, counterfactual=True)


def test_command_line_writes_a_repository(exported, tmp_path, capsys):
    e = exported("shapenet")
    assert main(["triton", str(e.path), str(tmp_path / "repo"), "--name", "net", "--max-batch-size", "8",
                 "--max-queue-delay-us", "100"]) == 0
    config = parsed(tmp_path / "repo" / "net" / "config.pbtxt")
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert "wrote" in capsys.readouterr().out
    assert main(["triton", str(e.path), str(tmp_path / "repo2"), "--max-batch-size", "-1"]) == 2
    assert "max_batch_size must be an integer >= 0" in capsys.readouterr().err
