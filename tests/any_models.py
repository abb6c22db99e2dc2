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
