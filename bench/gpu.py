"""Explanations on a GPU, in one command: correctness against the CPU, node placement, and cost.

For each model (resnet50 and vit_b_16 at 224x224 by default, random weights) and batch (1, 8, 32):
  (a) every method's maps on the device equal the CPU provider's within the export tolerances
      (onnx_explain.exporters.validate: every image within 5e-2 of its largest magnitude, a quarter
      within 1e-4, or 5e-2 / sqrt(points) for averaged maps);
  (b) node placement, read off ONNX Runtime's profile: every node on the device's provider, or the
      list of those that are not;
  (c) each method's latency over the plain forward of the same model on the device, pytorch-grad-cam
      GradCAM and captum Saliency and IntegratedGradients on the same device over torch's plain forward
      there, and ours against theirs in absolute time (medians of --repeats runs, --rounds rounds).
Run on one H100 it finishes within about 5 minutes.  `--device cpu` runs the same script on a machine
without a GPU (placement then checks the CPU provider).
Run: python bench/gpu.py [--device cuda] [--models resnet50 vit_b_16] [--batches 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from overhead import export_plain, vit_reshape  # bench/ is on sys.path when this script runs

from onnx_explain import Explainer
from onnx_explain.exporters import export_explainer
from onnx_explain.exporters.models import load_model, token_grid
from onnx_explain.exporters.validate import agreement_problem

# (a) and (b) run on one file with every method below; (c) times each of TIMED in a file of its own (ONNX
# Runtime runs a whole file whatever explain() asks for).
METHODS = ["cam", "gradcam", "gradcam++", "saliency", "guided_backprop", "gradient_x_input", "integrated_gradients",
           "smoothgrad"]
TIMED = ["gradcam", "saliency", "integrated_gradients"]
REFERENCE_OF = {"pytorch-grad-cam GradCAM": "gradcam", "captum Saliency": "saliency",
                "captum IntegratedGradients": "integrated_gradients"}
PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
IG_STEPS = 32


def timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def placement(path: Path, device: str, feeds: dict) -> Counter:
    """Nodes per provider other than the device's, from one profiled run: {op type: count}."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 4
    options.profile_file_prefix = str(path.with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(path), options, providers=[PROVIDER[device], "CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    away = Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and args["provider"] != PROVIDER[device]:
            away[f"{args.get('op_name', '?')} on {args['provider']}"] += 1
    return away


def bench(name: str, device: str, batches: list[int], methods: list[str], timed_methods: list[str], rounds: int,
          repeats: int, workdir: Path) -> None:
    torch.manual_seed(0)
    model, shape, layers, _ = load_model(name)
    model = model.eval()
    grid = token_grid(model)
    path, plain = workdir / f"{name}.onnx", workdir / f"{name}.plain.onnx"
    began = time.perf_counter()
    if grid or not _pooled_linear_head(model):  # cam needs global average pooling then one linear layer
        methods = [m for m in methods if m != "cam"]
    alone = {m: workdir / f"{name}.{m}.onnx" for m in timed_methods}
    for methods_here, target in ((methods, path), *(([m], p) for m, p in alone.items())):
        export_explainer(model, target, input_shape=shape, layers=layers, methods=methods_here, ig_steps=IG_STEPS,
                         token_grid=grid, validate_export=False)
    export_plain(model, plain, shape[-1])
    print(f"\n{name} {list(shape)}: exported in {time.perf_counter() - began:.0f} s; device {device}")
    providers = [device, "cpu"] if device == "cuda" else "cpu"
    ours = Explainer(path, providers=providers, max_images_per_run=None)
    cpu = Explainer(path, providers="cpu", max_images_per_run=None)
    single = {m: Explainer(p, providers=providers, max_images_per_run=None) for m, p in alone.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    forward = ort.InferenceSession(str(plain), options, providers=[PROVIDER[device], "CPUExecutionProvider"])
    torch_device = torch.device(device)
    model = model.to(torch_device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        feeds = {"images": x, "targets": np.full(batch, -1, np.int64)}
        got, want = ours.explain(x), cpu.explain(x)
        points = {m.method: ours.info.points if m.method == "integrated_gradients" else 1 for m in ours.info.maps}
        problems = [p for (method, layer), m in got.maps.items()
                    if (p := agreement_problem(f"{method}{'@' + layer if layer else ''}", m.raw,
                                               want.maps[method, layer].raw, spare=1,
                                               evaluations=points.get(method, 1)))]
        away = placement(path, device, feeds)
        print(f"  batch {batch}: (a) {'maps agree with the CPU provider' if not problems else problems}; "
              f"(b) {'every node on ' + PROVIDER[device] if not away else dict(away)}")
        base = [timed(lambda x=x: forward.run(None, {"images": x}), repeats, lambda: None) for _ in range(rounds)]
        row = {}
        for method, explainer in single.items():
            t = [timed(lambda e=explainer, x=x: e.explain(x), repeats, lambda: None) for _ in range(rounds)]
            row[method] = statistics.median(t)
        xt = torch.from_numpy(x).to(torch_device)
        with torch.no_grad():
            torch_forward = statistics.median(timed(lambda xt=xt: model(xt), repeats, sync) for _ in range(rounds))
        theirs = _references(model, xt, layers[0], grid, repeats, rounds, sync)
        forward_ms = statistics.median(base) * 1000
        print(f"  (c) plain forward: ORT {forward_ms:.2f} ms, torch {torch_forward * 1000:.2f} ms")
        for method, seconds in row.items():
            print(f"      {method:<24} {seconds * 1000:9.2f} ms  {seconds / statistics.median(base):6.2f}x plain ORT")
        for label, seconds in theirs.items():
            mine = row.get(REFERENCE_OF[label])
            versus = f"  ours {seconds / mine:5.2f}x faster" if mine else ""
            print(f"      {label:<24} {seconds * 1000:9.2f} ms  {seconds / torch_forward:6.2f}x plain torch{versus}")


def _pooled_linear_head(model: torch.nn.Module) -> bool:
    return type(model).__name__ in ("ResNet", "DenseNet", "MobileNetV2", "EfficientNet", "ShapeNet", "RegNet")


def _references(model, x: torch.Tensor, layer_name: str, grid, repeats: int, rounds: int, sync) -> dict:
    from captum.attr import IntegratedGradients, Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    layer = dict(model.named_modules())[layer_name]
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=vit_reshape(*grid) if grid else None)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    runs = {"pytorch-grad-cam GradCAM": lambda: cam(x, targets=cam_targets),
            "captum Saliency": lambda: Saliency(model).attribute(x.clone().requires_grad_(True), target=targets,
                                                                 abs=False),
            "captum IntegratedGradients": lambda: IntegratedGradients(model).attribute(
                x.clone().requires_grad_(True), target=targets, n_steps=IG_STEPS, internal_batch_size=256)}
    return {label: statistics.median(timed(fn, repeats, sync) for _ in range(rounds)) for label, fn in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"],
                        help="torchvision names, or 'shapenet' (default: resnet50 vit_b_16)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods of the file checked in (a) and (b)")
    parser.add_argument("--timed", nargs="+", default=TIMED, help="methods timed in (c), each in its own file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        parser.error("no CUDA execution provider in this onnxruntime: install onnx-explain[gpu], or run --device cpu")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench(name, args.device, args.batches, args.methods, args.timed, args.rounds, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
