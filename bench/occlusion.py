"""Cost of occlusion per image, full and incremental, in units of one image's share of a batched ORT
forward of the same model, with captum's Occlusion beside them.

    python bench/occlusion.py [--models resnet18 vgg16] [--grids 32/16 16/4] [--size 224] [--rounds 3]

For each model and window/stride it prints, measured in one run, the median over rounds of our full
occlusion, our incremental occlusion and captum's Occlusion (32 windows per forward, its fastest), the
FLOP ratio of the incremental plan, and the speedups beside their goals: 2x (resnet18) and 4x (vgg16)
over full occlusion at window 32 stride 16, and Krypton's exact CPU speedups (2.1x, 5.4x; Nakandala et
al., SIGMOD 2019) at its window 16 stride 4.  Each round re-times the unit, so the ratios hold on a
noisy machine; run it when the machine is otherwise idle.  vgg16 at window 16 stride 4 (2809 windows)
takes about ten minutes a round on two cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from captum.attr import Occlusion
from overhead import QUIET_S  # bench/ is on sys.path when this script runs
from overhead import median_time as timed

from onnx_explain import classifier, occlusion

BATCH = 32
GOALS = {("resnet18", 32, 16): 2.0, ("vgg16", 32, 16): 4.0,  # the goals over full occlusion
         ("resnet18", 16, 4): 2.1, ("vgg16", 16, 4): 5.4}  # Krypton's exact CPU speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--grids", nargs="+", default=["32/16", "16/4"], help="window/stride pairs")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in args.models:
        net, model = _exported(name, args.size)
        for grid in args.grids:
            window, stride = (int(v) for v in grid.split("/"))
            _bench(net, model, name, args.size, window, stride, args.rounds)


def _exported(name: str, size: int):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)().eval()
    path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, size, size),), str(path), dynamo=True,
                      dynamic_shapes=({0: "batch"},), verbose=False)
    return net, classifier(path)


def _bench(net, model, name: str, size: int, window: int, stride: int, rounds: int) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(model.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).random((BATCH, 3, size, size), dtype=np.float32)
    x = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
    kwargs = dict(window=window, stride=stride, score="logit", providers="cpu")
    found = occlusion(model, x, incremental=True, **kwargs)  # builds the session
    occlusion(model, x, incremental=False, **kwargs)
    target, ratio = int(found.targets[0]), found["occlusion"].flop_ratio
    captum = Occlusion(net)

    def run_captum() -> None:
        with torch.no_grad():
            captum.attribute(torch.from_numpy(x), sliding_window_shapes=(3, window, window),
                             strides=(3, stride, stride), baselines=0, target=target, perturbations_per_eval=BATCH)

    rows = {"full occlusion": [], "incremental occlusion": [], f"captum Occlusion ({BATCH} windows per forward)": []}
    for _ in range(rounds):
        unit = timed(lambda: plain.run(None, {model.image: batch}), 3) / BATCH
        rows["full occlusion"].append(_once(lambda: occlusion(model, x, incremental=False, **kwargs)) / unit)
        rows["incremental occlusion"].append(_once(lambda: occlusion(model, x, incremental=True, **kwargs)) / unit)
        rows[f"captum Occlusion ({BATCH} windows per forward)"].append(_once(run_captum) / unit)
    medians = {k: statistics.median(v) for k, v in rows.items()}
    windows = ((size - window) // stride + 1) ** 2
    print(f"{name} {size}x{size}, window {window}, stride {stride}: {windows} windows; FLOP ratio {ratio:.3f} "
          f"(incremental / full, over all windows); unit: one image of an ORT forward at batch {BATCH}; "
          f"median of {rounds} round(s)")
    for label, value in medians.items():
        print(f"  {label:42s} {value:9.1f} image-forwards per image")
    incremental = medians["incremental occlusion"]
    captum_cost = medians[f"captum Occlusion ({BATCH} windows per forward)"]
    goal = GOALS.get((name, window, stride))
    print(f"  full / incremental {medians['full occlusion'] / incremental:.2f}x"
          + (f" (goal {goal}x)" if goal else "")
          + f"; captum / incremental {captum_cost / incremental:.2f}x; FLOP bound {1 / ratio:.2f}x", flush=True)


def _once(fn) -> float:
    """Seconds of one run (the sessions are built and warm: each occlusion here takes seconds to minutes),
    after a pause that lets the last run's thread pools stop spinning."""
    time.sleep(QUIET_S)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
