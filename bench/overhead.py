"""Cost of each method's explanation graph in units of the plain forward pass of the same model.

For each model and batch size, prints the ONNX Runtime time of each method's explain graph (exported
alone) divided by the time of the plain forward-only ONNX of the same model, in the same runtime and
process; then the same ratio for captum and pytorch-grad-cam (eager torch) on the same work.

The machine is shared and its speed drifts, so the plain forward is timed again right before each
method in every round: each round gives one ratio per method (median of `--repeats` runs over the
median of the plain forward's runs just before), and the figure printed is the median over `--rounds`.
Run: python bench/overhead.py [--models resnet18 resnet50] [--batches 1 8] [--rounds 5] [--repeats 3]
The relevance family:
  python bench/overhead.py --models resnet18 --batches 1 --rounds 3 --repeats 3 \
      --methods saliency lrp_epsilon deeplift integrated_gradients smoothgrad \
      --references saliency lrp deeplift integratedgradients noisetunnel
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

from onnx_explain import Explainer
from onnx_explain.exporters import GRADIENT_FAMILY, export_explainer
from onnx_explain.exporters.models import load_model, token_grid


def vit_reshape(height: int, width: int):
    """pytorch-grad-cam's documented reshape_transform for vision transformers: class token dropped."""
    return lambda tokens: tokens[:, 1:].reshape(len(tokens), height, width, -1).permute(0, 3, 1, 2)


IG_STEPS, NOISE_SAMPLES = 32, 16  # the export defaults, and captum's runs on the same work


# Each ONNX Runtime session (and torch) has its own thread pool, whose threads spin for a while after a
# run.  On a small machine they slow the next session's runs and so skew the ratios; each timing starts
# after a pause.
QUIET_S = 0.2


def median_time(fn, repeats: int) -> float:
    time.sleep(QUIET_S)
    fn()  # one untimed run: first-run allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_ratios(base, runs: dict, rounds: int, repeats: int) -> tuple[float, dict[str, float]]:
    """(median base time, {label: median over rounds of time / base time timed right before it}).

    The base is timed again before every run, not once per round: over the minutes a round takes, the
    machine's speed moved enough to put a CAM below the plain forward it contains (0.89x)."""
    base_times, ratios = [], {label: [] for label in runs}
    for _ in range(rounds):
        for label, fn in runs.items():
            base_times.append(median_time(base, repeats))
            ratios[label].append(median_time(fn, repeats) / base_times[-1])
    return statistics.median(base_times), {label: statistics.median(r) for label, r in ratios.items()}


def export_plain(model: torch.nn.Module, path: Path, size: int) -> None:
    n = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), dynamo=True, verbose=False,
                          input_names=["images"], dynamic_shapes={"x": {0: n}})


def reference_runs(model: torch.nn.Module, x: torch.Tensor, targets: list[int], layer_name: str,
                   grid: tuple[int, int] | None) -> dict:
    from captum.attr import (
        LRP,
        Deconvolution,
        DeepLift,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        LayerGradCam,
        NoiseTunnel,
        Saliency,
    )
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[layer_name]
    t = torch.tensor(targets)
    reshape = vit_reshape(*grid) if grid else None
    grad_cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    grad_cam_pp = GradCAMPlusPlus(model=model, target_layers=[layer], reshape_transform=reshape)
    cam_targets = [ClassifierOutputTarget(i) for i in targets]

    def leaf():
        return x.clone().requires_grad_(True)

    return {
        **({} if grid else {"captum LayerGradCam": lambda: LayerGradCam(model, layer).attribute(x, target=t)}),
        "captum Saliency": lambda: Saliency(model).attribute(leaf(), target=t, abs=False),
        "captum InputXGradient": lambda: InputXGradient(model).attribute(leaf(), target=t),
        "captum GuidedBackprop": lambda: GuidedBackprop(model).attribute(leaf(), target=t),
        "captum Deconvolution": lambda: Deconvolution(model).attribute(leaf(), target=t),
        "pytorch-grad-cam GradCAM": lambda: grad_cam(x, targets=cam_targets),
        "pytorch-grad-cam GradCAM++": lambda: grad_cam_pp(x, targets=cam_targets),
        "captum LRP": lambda: LRP(model).attribute(leaf(), target=t),
        "captum DeepLift": lambda: DeepLift(model).attribute(leaf(), target=t),
        f"captum IntegratedGradients {IG_STEPS}": lambda: IntegratedGradients(model).attribute(
            leaf(), target=t, n_steps=IG_STEPS),
        f"captum NoiseTunnel(Saliency) {NOISE_SAMPLES}": lambda: NoiseTunnel(Saliency(model)).attribute(
            leaf(), target=t, nt_samples=NOISE_SAMPLES, stdevs=0.15, abs=False),
    }


def runnable(runs: dict) -> dict:
    """The runs that work on this model; captum's LRP and DeepLift refuse some (in-place or reused ReLUs)."""
    kept = {}
    for label, fn in runs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
            kept[label] = fn
        except Exception as e:  # a reference that cannot run here is reported, not timed
            print(f"  ({label} cannot run on this model: {str(e).strip().splitlines()[0][:100]})")
    return kept


def bench_model(name: str, methods: list[str], batches: list[int], size: int, rounds: int, repeats: int,
                workdir: Path, references: list[str]) -> None:
    torch.manual_seed(0)
    model, _, layers, _ = load_model(name)  # torchvision, random weights; its usual CAM layer
    model.eval()
    layer, grid = layers[0], token_grid(model)
    plain_path = workdir / f"{name}.plain.onnx"
    export_plain(model, plain_path, size)
    plain = ort.InferenceSession(str(plain_path), providers=["CPUExecutionProvider"])
    explainers = {}
    for method in methods:
        path = workdir / f"{name}.{method}.onnx"
        print(f"exporting {name} {method} ...", flush=True)
        export_explainer(model, path, input_shape=(3, size, size), layers=[layer], methods=[method],
                         ig_steps=IG_STEPS, noise_samples=NOISE_SAMPLES, token_grid=grid, validate_export=False)
        explainers[method] = Explainer(path, providers="cpu")
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        targets = [int(i) for i in plain.run(None, {"images": x})[0].argmax(1)]
        runs = {f"ours {method}": lambda ex=ex, method=method, x=x: ex.explain(x, methods=[method])
                for method, ex in explainers.items()}
        wanted = {k: v for k, v in reference_runs(model, torch.from_numpy(x), targets, layer, grid).items()
                  if any(k.split()[1].lower().startswith(r) for r in references)}
        runs.update(runnable(wanted))
        base, ratios = paired_ratios(lambda x=x: plain.run(None, {"images": x}), runs, rounds, repeats)
        print(f"\n{name}, batch {batch}, {size}x{size}, CPU: plain ORT forward {base * 1e3:.1f} ms (median)")
        for label, ratio in ratios.items():
            print(f"  {label:<38} {ratio:7.2f}x")
        if "ours integrated_gradients" in ratios and "ours saliency" in ratios:
            per_step = ratios["ours integrated_gradients"] / (IG_STEPS * ratios["ours saliency"])
            print(f"  integrated_gradients / ({IG_STEPS} x saliency)   {per_step:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=sorted(GRADIENT_FAMILY),
                        help="default: the gradient family; name others (lrp_epsilon deeplift ...) to add them")
    parser.add_argument("--references", nargs="+", default=["layergradcam", "saliency", "inputxgradient",
                                                             "guidedbackprop", "deconvolution", "gradcam"],
                        help="the reference runs to time, by the start of their class name, lower case "
                             "(lrp deeplift integratedgradients noisetunnel ...)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of alternating timings (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each graph per round (default 5)")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench_model(name, args.methods, args.batches, args.size, args.rounds, args.repeats, Path(tmp),
                        args.references)


if __name__ == "__main__":
    main()
