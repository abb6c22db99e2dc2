"""Cost of occlusion per image, in units of one image's share of a batched ORT forward of the same model.

    python bench/occlusion.py [--model resnet18] [--size 224] [--window 32] [--stride 16] [--rounds 5]

Prints, measured in one run, the median over rounds of: our occlusion graph (one image per run), the
number of windows (+1: the unoccluded image), and captum's Occlusion on the torch model, both with its
default one window per forward and with 32 windows per forward.  Each round re-times the unit, so
the ratios hold on a noisy machine; run it when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from captum.attr import Occlusion
from overhead import median_time as timed  # bench/ is on sys.path when this script runs

from onnx_explain import classifier, occlusion

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = getattr(torchvision.models, args.model)().eval()
    image = torch.rand(1, 3, args.size, args.size)
    path = Path(tempfile.mkdtemp()) / f"{args.model}.onnx"
    torch.onnx.export(net, (image,), str(path), dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False)
    model = classifier(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((BATCH, 3, args.size, args.size), dtype=np.float32)
    x = image.numpy()
    kwargs = dict(window=args.window, stride=args.stride, score="logit", providers="cpu")
    windows = ((args.size - args.window) // args.stride + 1) ** 2
    target = int(occlusion(model, x, **kwargs).targets[0])
    captum = Occlusion(net)

    def run_captum(per_eval: int) -> None:
        with torch.no_grad():
            captum.attribute(image, sliding_window_shapes=(3, args.window, args.window),
                             strides=(3, args.stride, args.stride), baselines=0, target=target,
                             perturbations_per_eval=per_eval)

    rows = {"ours": [], "captum (1 window per forward)": [], f"captum ({BATCH} windows per forward)": []}
    for _ in range(args.rounds):
        unit = timed(lambda: plain.run(None, {model.image: batch}), 3) / BATCH
        rows["ours"].append(timed(lambda: occlusion(model, x, **kwargs), 3) / unit)
        rows["captum (1 window per forward)"].append(timed(lambda: run_captum(1), 1) / unit)
        rows[f"captum ({BATCH} windows per forward)"].append(timed(lambda: run_captum(BATCH), 1) / unit)
    print(f"{args.model} {args.size}x{args.size}, window {args.window}, stride {args.stride}: {windows} windows "
          f"(goal: at most {1.1 * windows:.0f} image-forwards); unit: one image of an ORT forward at batch {BATCH}; "
          f"median of {args.rounds} rounds")
    for name, values in rows.items():
        print(f"  {name:32s} {statistics.median(values):7.1f} image-forwards per image")
    print(f"  captum / ours (1 window per forward): "
          f"{statistics.median(rows['captum (1 window per forward)']) / statistics.median(rows['ours']):.2f}x")


if __name__ == "__main__":
    main()
