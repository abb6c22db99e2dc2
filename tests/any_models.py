"""ONNX classifiers that did not come from our exporter: torchvision nets through plain torch.onnx.export
(one with its preprocessing inside, one with a final Softmax, one with a fixed batch) and a small net
written with onnx.helper whose input is NHWC."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Preprocessed(torch.nn.Module):
    """A classifier that normalises its own input, as deployed models often do."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN)[:, None, None])
        self.register_buffer("std", torch.tensor(STD)[:, None, None])

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class WithSoftmax(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


def calibrated(net: torch.nn.Module, size: int) -> torch.nn.Module:
    """BN statistics measured on random images.  A randomly initialised mobilenet_v2 with made-up
    statistics is input-independent (logits vary by 1e-8 across images): each block shrinks the spread
    between images, which BN in eval mode does not restore."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(16, 3, size, size))
    return net.eval()


def torch_export(net: torch.nn.Module, path, size: int, batch: int | None = None) -> str:
    """Plain torch.onnx.export; a dynamic batch unless `batch` fixes one."""
    example = torch.rand(batch or 2, 3, size, size)
    dynamic = None if batch else ({0: "batch"},)
    torch.onnx.export(net.eval(), (example,), str(path), dynamo=True, dynamic_shapes=dynamic, verbose=False)
    return str(path)


def handmade(layout: str, size: int = 16, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3 (8 channels) -> Relu -> GlobalAveragePool -> Gemm, written by hand; an NHWC input is
    transposed inside, so its activations ("act") stay NCHW."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([-1, 8], np.int64), "flat")]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2])] if layout == "NHWC" else []
    nodes += [helper.make_node("Conv", ["nchw" if layout == "NHWC" else "image", "w", "b"], ["conv"], pads=[1] * 4),
              helper.make_node("Relu", ["conv"], ["act"]),
              helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
              helper.make_node("Reshape", ["pooled", "flat"], ["features"]),
              helper.make_node("Gemm", ["features", "fc"], ["logits"], transB=1)]
    shape = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    graph = helper.make_graph(nodes, "handmade", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def nhwc_cnn(size: int = 24, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A small CNN written with onnx.helper whose input is NHWC: normalisation in NHWC, a transpose,
    convolutions with stride, dilation, groups and SAME_UPPER padding, ceil-mode max pooling, average
    pooling, batch norm, a residual Add, a Concat, SiLU (x * sigmoid(x)), a detour through NHWC with a
    per-channel scale, then global pooling and a Gemm."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [numpy_helper.from_array(np.array(MEAN, np.float32), "mean"),
             numpy_helper.from_array(1 / np.array(STD, np.float32), "inv_std"),
             weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3), weight("w3", 8, 1, 3, 3),
             weight("w4", 16, 16, 3, 3), weight("w5", 16, 16, 3, 3), weight("scale", 16),
             numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), "bn_scale"), weight("bn_bias", 8),
             weight("bn_mean", 8), numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), "bn_var"),
             weight("fc", classes, 16), numpy_helper.from_array(np.array([-1, 16], np.int64), "flat")]
    node = helper.make_node
    nodes = [node("Sub", ["image", "mean"], ["centred"]), node("Mul", ["centred", "inv_std"], ["normal"]),
             node("Transpose", ["normal"], ["x"], perm=[0, 3, 1, 2]),
             node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
             node("Conv", ["p1", "w2"], ["c2"], pads=[2, 2, 2, 2], dilations=[2, 2]),
             node("BatchNormalization", ["c2", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n2"]),
             node("Add", ["n2", "p1"], ["res"]), node("Relu", ["res"], ["r2"]),
             node("Conv", ["r2", "w3"], ["dw"], pads=[1, 1, 1, 1], group=8),
             node("Concat", ["r2", "dw"], ["cat"], axis=1),
             node("AveragePool", ["cat"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                  count_include_pad=1),
             node("Conv", ["p2", "w4"], ["c4"], strides=[2, 2], auto_pad="SAME_UPPER"),
             node("Sigmoid", ["c4"], ["gate"]), node("Mul", ["c4", "gate"], ["silu"]),
             node("Transpose", ["silu"], ["silu_nhwc"], perm=[0, 2, 3, 1]),
             node("Mul", ["silu_nhwc", "scale"], ["scaled"]),
             node("Transpose", ["scaled"], ["back"], perm=[0, 3, 1, 2]),
             node("Conv", ["back", "w5"], ["c5"], pads=[1, 1, 1, 1]),
             node("GlobalAveragePool", ["c5"], ["pooled"]), node("Reshape", ["pooled", "flat"], ["features"]),
             node("Gemm", ["features", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "nhwc_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
