"""Cost of each method's explanation graph in units of the plain forward pass of the same model.

For each model and batch size, prints the median ONNX Runtime time of each method's explain graph
(exported alone) divided by the median time of the plain forward-only ONNX of the same model, in the
same runtime and process; then the same ratio for captum and pytorch-grad-cam (eager torch) on the same
work.  Run: python bench/overhead.py [--models resnet18 resnet50] [--batches 1 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from exporters import export_explainer
from onnx_explain import Explainer

METHODS = ("gradcam", "saliency", "guided_backprop")
LAYER = "layer4"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export_plain(model: torch.nn.Module, path: Path, size: int) -> None:
    n = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), dynamo=True, verbose=False,
                          input_names=["images"], dynamic_shapes={"x": {0: n}})


def reference_runs(model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> dict:
    from captum.attr import GuidedBackprop, LayerGradCam, Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[LAYER]
    t = torch.tensor(targets)
    grad_cam = GradCAM(model=model, target_layers=[layer])
    return {
        "captum LayerGradCam": lambda: LayerGradCam(model, layer).attribute(x, target=t),
        "captum Saliency": lambda: Saliency(model).attribute(x.clone().requires_grad_(True), target=t, abs=False),
        "captum GuidedBackprop": lambda: GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=t),
        "pytorch-grad-cam GradCAM": lambda: grad_cam(x, targets=[ClassifierOutputTarget(i) for i in targets]),
    }


def bench_model(name: str, batches: list[int], size: int, repeats: int, workdir: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    plain_path = workdir / f"{name}.plain.onnx"
    export_plain(model, plain_path, size)
    plain = ort.InferenceSession(str(plain_path), providers=["CPUExecutionProvider"])
    explainers = {}
    for method in METHODS:
        path = workdir / f"{name}.{method}.onnx"
        export_explainer(model, path, input_shape=(3, size, size), layers=[LAYER], methods=[method],
                         validate_export=False)
        explainers[method] = Explainer(path, providers="cpu")
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        base = median_time(lambda x=x: plain.run(None, {"images": x}), repeats)
        print(f"\n{name}, batch {batch}, {size}x{size}, CPU: plain ORT forward {base * 1e3:.1f} ms (median)")
        for method, ex in explainers.items():
            t = median_time(lambda ex=ex, method=method, x=x: ex.explain(x, methods=[method]), repeats)
            print(f"  onnx-explain {method:<16} {t / base:6.2f}x")
        targets = [int(i) for i in plain.run(None, {"images": x})[0].argmax(1)]
        for label, fn in reference_runs(model, torch.from_numpy(x), targets).items():
            print(f"  {label:<29} {median_time(fn, max(3, repeats // 2)) / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench_model(name, args.batches, args.size, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
