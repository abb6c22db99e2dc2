"""exporters/default_inputs.py on small hand-written graphs: what goes into the If, and that both of
its branches give the graph's own outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_explain.exporters.default_inputs import _LARGE_BYTES, cache_default, cache_defaults

DEFAULT = np.array([[0.5, -1.0]], np.float32)


def _model(with_default: bool = True) -> onnx.ModelProto:
    """out = images @ w + relu(baselines @ w) + reshape(baselines); gap = images @ w - baselines @ w."""
    nodes = [helper.make_node("MatMul", ["baselines", "w"], ["reference"]),
             helper.make_node("Relu", ["reference"], ["reference_relu"]),  # stays outside: its input is returned
             helper.make_node("Reshape", ["baselines", "shape"], ["flat"]),  # stays outside: reads the input
             helper.make_node("MatMul", ["images", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "reference_relu"], ["partial"]),
             helper.make_node("Add", ["partial", "flat"], ["out"]),
             helper.make_node("Sub", ["scores", "reference"], ["gap"])]
    initializers = [numpy_helper.from_array(np.array([[1.0, -2.0], [3.0, 0.5]], np.float32), "w"),
                    numpy_helper.from_array(np.array([1, 2], np.int64), "shape")]
    if with_default:
        initializers.append(numpy_helper.from_array(DEFAULT, "baselines"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 2]),
                     helper.make_tensor_value_info("baselines", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("out", "gap")], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_the_if_returns_the_reference_pass_and_both_branches_agree():
    model = _model()
    cached = cache_default(model, "baselines")
    onnx.checker.check_model(cached, full_check=True)
    (branch,) = [n for n in cached.graph.node if n.op_type == "If"]
    assert list(branch.output) == ["reference"]  # the ReLU and the reshape run outside, on one image
    assert not any(n.output[0] == "reference" for n in cached.graph.node if n.op_type == "MatMul")
    images = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    for feeds in ({"images": images}, {"images": images, "baselines": DEFAULT},
                  {"images": images, "baselines": np.array([[-2.0, 4.0]], np.float32)}):
        for want, got in zip(_run(model, feeds), _run(cached, feeds), strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_graph_without_a_default_is_left_as_it_is():
    model = _model(with_default=False)
    assert cache_defaults(model) is model


def test_an_integer_seed_and_its_draw():
    """noise = cast(seed * 7 + [0, 1, 2]) * std: the draw is cached, the scaling by std stays outside."""
    nodes = [helper.make_node("Mul", ["seed", "seven"], ["scaled"]),
             helper.make_node("Add", ["scaled", "index"], ["mixed"]),
             helper.make_node("Cast", ["mixed"], ["draw"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["draw", "std"], ["noise"])]
    initializers = [numpy_helper.from_array(np.array(7, np.int64), "seven"),
                    numpy_helper.from_array(np.arange(3, dtype=np.int64), "index"),
                    numpy_helper.from_array(np.array(0, np.int64), "seed")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("seed", TensorProto.INT64, []),
                                           helper.make_tensor_value_info("std", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("noise", TensorProto.FLOAT, [3])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    cached = cache_defaults(model)
    (branch,) = [n for n in cached.graph.node if n.op_type == "If"]
    assert list(branch.output) == ["draw"]
    std = np.array(0.5, np.float32)
    for seed in (None, 0, 3, -5):
        feeds = {"std": std} if seed is None else {"std": std, "seed": np.array(seed, np.int64)}
        np.testing.assert_array_equal(_run(cached, feeds)[0], _run(model, feeds)[0])


def test_a_large_weight_gives_the_same_cache():
    """A weight above the size that shape inference reads as dims alone and the cached run takes as a feed."""
    width = _LARGE_BYTES // 8 + 1  # [2, width] float32 is over the bound
    weight = np.random.default_rng(1).standard_normal((2, width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["baselines", "w"], ["reference"]),
             helper.make_node("MatMul", ["images", "w"], ["scores"]),
             helper.make_node("Sub", ["scores", "reference"], ["gap"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 2]),
                     helper.make_tensor_value_info("baselines", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("gap", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(DEFAULT, "baselines")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    cached = cache_default(model, "baselines")
    (branch,) = [n for n in cached.graph.node if n.op_type == "If"]
    (then_branch,) = [a.g for a in branch.attribute if a.name == "then_branch"]
    np.testing.assert_allclose(numpy_helper.to_array(then_branch.node[0].attribute[0].t), DEFAULT @ weight, rtol=1e-6)
    images = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    for feeds in ({"images": images}, {"images": images, "baselines": np.array([[-2.0, 4.0]], np.float32)}):
        np.testing.assert_array_equal(_run(cached, feeds)[0], _run(model, feeds)[0])
