"""Every node of every graph runs on ONNX Runtime's CUDA provider: checked statically against the CUDA
section of ONNX Runtime's operator-kernel table (tests/data/ort-cuda-kernels.json; its `source` names the
commit, from early 2026, newer than onnxruntime-gpu 1.23).  A node without a kernel for its op, opset
version and input types would run on the CPU, silently, with copies across the bus."""

from __future__ import annotations

import onnx
import pytest
from any_models import handmade, nhwc_cnn, torch_export
from conftest import PARITY_MODELS, make_model
from cuda_kernels import SOURCE, cpu_fallbacks

import onnx_explain as ox


def test_the_table_names_its_source():
    assert "onnxruntime" in SOURCE and "OperatorKernels.md" in SOURCE


@pytest.mark.parametrize("model", ["shapenet", *PARITY_MODELS])
def test_exported_file_runs_on_cuda(exported, model):
    fallbacks = cpu_fallbacks(onnx.load(str(exported(model).path)))
    assert not fallbacks, f"{model}: nodes without a CUDA kernel: {sorted(set(fallbacks), key=str)}"


def test_fallback_is_found_where_there_is_one():
    """The check itself: opset 20's ReduceMax has no CUDA kernel ("18+" serves only version 18)."""
    model = handmade("NCHW")
    model.opset_import[0].version = 20
    model.graph.node.append(onnx.helper.make_node("ReduceMax", ["logits"], ["top"], keepdims=1))
    model.graph.output.append(onnx.helper.make_tensor_value_info("top", onnx.TensorProto.FLOAT, None))
    assert [(f.op, f.since) for f in cpu_fallbacks(model)] == [("ReduceMax", 20)]


@pytest.fixture(scope="module")
def plain_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("plain")
    return {"handmade": (handmade("NCHW"), "act"), "nhwc_cnn": (nhwc_cnn(32), "c4"),
            "resnet18": (onnx.load(torch_export(make_model("resnet18"), directory / "r.onnx", 32)), "layer4")}


@pytest.mark.parametrize("name", ["handmade", "nhwc_cnn", "resnet18"])
def test_any_onnx_graphs_run_on_cuda(plain_models, name):
    model, layer = plain_models[name]
    graphs = {"occlusion": ox.occlusion_graph(model, window=8, stride=8, incremental=False),
              "occlusion incremental": ox.occlusion_graph(model, window=8, stride=4, incremental=True),
              "occlusion incremental blur": ox.occlusion_graph(model, window=8, stride=4, baseline="blur",
                                                               incremental=True),
              "occlusion blur": ox.occlusion_graph(model, window=8, stride=8, baseline="blur"),
              "occlusion mean": ox.occlusion_graph(model, window=8, stride=8, baseline="mean"),
              "rise": ox.rise_graph(model, n_masks=8),
              **{kind: ox.cam_graph(model, layer=layer, kind=kind) for kind in ("activations", "scorecam",
                                                                               "ablationcam")}}
    found = {graph: sorted(set(cpu_fallbacks(proto)), key=str) for graph, proto in graphs.items()}
    assert not any(found.values()), found
