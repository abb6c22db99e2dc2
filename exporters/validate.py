"""Checking an exported file against the torch graph it came from, in ONNX Runtime's default setup.

Float32 maps of a ReLU network cannot match across runtimes everywhere: ONNX Runtime's kernels and
graph rewrites (MLAS convolutions, the NCHWc layout transform, fusions) sum in another order than
torch, and a pre-activation within rounding of zero can land on the other side of a ReLU kink (or a
max-pool tie can go the other way); the backward pass through that unit then changes.  Measured on
random-weight torchvision nets at 64x64: 1 image in 16 moves on vgg11_bn and resnet18, 4 in 10 on
densenet121 (BN then ReLU in every layer), by up to 2e-2 of the map's largest magnitude; every other
image matches to 1e-6.  So the check is per image: every image but one within KINK_RTOL, and a share
of the images within RTOL, which a wrong translation (every image off) cannot pass.  The one image
may be ill-conditioned: xgradcam divides by each channel's sum over the map, which after a LayerNorm
can come near zero (vit_b_16: one of the 8 images moved by 0.10 in ONNX Runtime and by 0.12 in torch,
each against torch in float64).

A map that averages S gradient evaluations (integrated gradients' steps, SmoothGrad's noisy copies) is
rarely exact anywhere at full resolution: each evaluation can move at a kink, so nearly every image
holds some that did.  Each moves the average by its 1/S share, with either sign, so an image's error
shrinks like KINK_RTOL / sqrt(S); for such maps that is the tolerance the share of images must meet.
Measured on random-weight resnet18 at 224x224 (3 in 8 images move in saliency): integrated gradients
(32 steps) 0.7e-3 to 2.1e-3 in every image, SmoothGrad (16 copies) up to 3.6e-3, against 8.8e-3 and
1.25e-2.  A wrong step or sample weight moves the map by 1/S, which that still catches for S < 400.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.exporters.errors import ExportValidationError
from onnx_explain.exporters.trace import Traced, targets_shape
from onnx_explain.runtime.explainer import Explainer

VALIDATION_BATCH = 8  # differs from the trace batch, so a batch size baked into the graph is caught
RTOL = 1e-4  # of each image's largest magnitude in the reference
KINK_RTOL = 5e-2
EXACT_SHARE = 0.25  # of the images that must be within RTOL (densenet121 at 4 in 10 moved: 1% false alarms)
# Where that fails, the float64 check of _beyond_float32: ONNX Runtime may be this many times as far from
# float64 as torch float32 is (their kernels sum in different orders, so their errors differ in size)...
FLOAT32_FACTOR = 4.0
FLOOR_RTOL = 1e-5  # ... plus this share of the output's largest magnitude in the batch,
ZERO_RTOL = 1e-6  # and an image whose raw map is below this share of its logits is zero to rounding

log = logging.getLogger(__name__)


def per_image_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """[N] max |got - want| of each image relative to that image's largest reference magnitude."""
    n = len(want)
    diff = np.abs(got.astype(np.float64) - want).reshape(n, -1).max(axis=1) if want.size else np.zeros(n)
    scale = np.abs(want).reshape(n, -1).max(axis=1) if want.size else np.ones(n)
    return diff / np.maximum(scale, 1e-12)


def exact_tolerance(evaluations: int) -> float:
    """What a share of the images must meet: RTOL, or for a map averaging that many gradients the
    KINK_RTOL / sqrt(evaluations) of the module docstring."""
    return RTOL if evaluations == 1 else max(RTOL, KINK_RTOL / math.sqrt(evaluations))


def agreement_problem(name: str, got: np.ndarray, want: np.ndarray, spare: int = 0,
                      evaluations: int = 1) -> str | None:
    """None when `got` agrees with `want` as the module docstring says, else what is wrong; `spare`
    images may exceed KINK_RTOL (validate spares one); `evaluations`: the gradients the map averages."""
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    errors = per_image_errors(got, want)
    tolerance = exact_tolerance(evaluations)
    exact = float((errors <= tolerance).mean()) if errors.size else 1.0
    if errors.size and ((errors > KINK_RTOL).sum() > spare or exact < EXACT_SHARE):
        return (f"{name}: per-image max error {errors.max():.2e} (allowed {KINK_RTOL:.0e}"
                f"{f' but on {spare}' if spare else ''}), {exact:.0%} of images within {tolerance:.1e} "
                f"(needed {EXACT_SHARE:.0%})")
    return None


def validate(path: Path, traced: Traced, evaluations: dict[str, int] | None = None, seed: int = 0) -> dict[str, float]:
    """Run the file in ONNX Runtime (CPU, default optimisation level) and the traced graph in torch on
    one random batch; return each output's largest per-image error.  `evaluations`: method -> the
    gradients its map averages, for the sampled methods.  A file with a `baselines` or `seed` input is
    checked at their defaults (whose work the file caches, see default_inputs.py) and at other values.

    Raises:
        ExportValidationError: an output has another shape, the logits or targets differ beyond RTOL, or
            a map disagrees beyond what ReLU-kink rounding explains.
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(VALIDATION_BATCH, *traced.input_shape, generator=gen)
    targets = torch.zeros(targets_shape(VALIDATION_BATCH, traced.top_k), dtype=torch.int64)
    targets[0] = -1  # the first image explains its predicted class(es), the others class 0 (and up)
    if traced.top_k > 1:
        targets[1:] = torch.arange(traced.top_k)
    feeds = {"images": images, "targets": targets, "counterfactual": torch.tensor(False), **traced.extras}
    changed = {o.name: _other_value(feeds[o.name], gen) for o in GRAPH_OPTIONS if o.varied and o.name in feeds}
    variants = [feeds, {**feeds, **changed}] if changed else [feeds]
    explainer = Explainer(path, providers="cpu")  # as a server would open it: default level
    worst: dict[str, float] = {}
    for variant in variants:
        for name, error in _compare(explainer, traced, variant, evaluations or {}).items():
            worst[name] = max(error, worst.get(name, 0.0))
    return worst


def _other_value(default: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A value unlike the default: small random floats of its shape, or another integer."""
    if default.is_floating_point():
        return torch.randn(default.shape, generator=gen) * 0.1
    return default + 12345


def _compare(explainer: Explainer, traced: Traced, feeds: dict[str, torch.Tensor],
             evaluations: dict[str, int]) -> dict[str, float]:
    """validate() on one set of inputs (images, targets, counterfactual, then the traced extras)."""
    size = explainer.images_per_run(VALIDATION_BATCH)  # torch runs the same chunks: both bound memory
    split = ("images", "targets")
    with torch.no_grad():
        chunks = [traced.graph(traced.params, *(v[i:i + size] if k in split else v for k, v in feeds.items()))
                  for i in range(0, VALIDATION_BATCH, size)]
    expected = [torch.cat(parts).numpy() for parts in zip(*chunks, strict=True)]
    got = explainer.run(traced.output_names, {k: v.numpy() for k, v in feeds.items() if k in explainer.inputs})
    averaged = {out: evaluations.get(m.method, 1) for m in explainer.info.maps for out in (m.raw, m.heatmap)}
    problems = []
    scale = max(float(np.abs(expected[traced.output_names.index("logits")]).max()), 1e-12)  # zero-init heads
    for name, want, have in zip(traced.output_names, expected, got, strict=True):
        if name in ("logits", "explained_targets"):
            error = per_image_errors(have, want).max() if have.shape == want.shape else np.inf
            problem = None if error <= RTOL else f"{name}: max error {error:.2e} (allowed {RTOL:.0e})"
        elif name.endswith(".delta"):  # near zero by design: measured against the logits' magnitude
            error = np.abs(have - want).max() / scale if have.shape == want.shape else np.inf
            problem = None if error <= KINK_RTOL else f"{name}: max error {error:.2e} (allowed {KINK_RTOL:.0e})"
        else:
            problem = agreement_problem(name, have, want, spare=1, evaluations=averaged.get(name, 1))
        if problem:
            problems.append(problem)
    if problems:
        problems = _beyond_float32(traced, feeds, dict(zip(traced.output_names, expected, strict=True)),
                                   dict(zip(traced.output_names, got, strict=True)), problems)
    if problems:
        raise ExportValidationError(f"{explainer.path} disagrees with torch in ONNX Runtime: " + "; ".join(problems))
    pairs = zip(traced.output_names, expected, got, strict=True)
    return {name: float(per_image_errors(have, want).max()) for name, want, have in pairs}


def _beyond_float32(traced: Traced, feeds: dict[str, torch.Tensor], torch32: dict[str, np.ndarray],
                    ort32: dict[str, np.ndarray], problems: list[str]) -> list[str]:
    """The problems that float32's own error does not explain.  The torch graph runs again in float64;
    an output is fine when, in every image, ONNX Runtime's error against it is within FLOAT32_FACTOR
    times torch float32's own error, plus FLOOR_RTOL of the output's largest magnitude in the batch.
    An image whose map is zero to rounding (all below ZERO_RTOL of its largest logit) is fine too,
    with a warning: its heatmap is rounding noise in any float32 runtime.  When the model cannot run in
    float64, the problems stand."""
    try:
        exact = _float64_outputs(traced, feeds)
    except Exception as e:  # noqa: BLE001 -- an op without a float64 kernel: keep the float32 verdict
        log.info("float64 reference unavailable (%s); validation compares with torch float32 only", e)
        return problems
    left, zero = [], []
    for problem in problems:
        name = problem.split(":")[0]
        want, ours, theirs = exact[name], ort32[name], torch32[name]
        n = len(want)
        ours_err, theirs_err = (np.abs(x.astype(np.float64) - want).reshape(n, -1).max(axis=1) for x in (ours, theirs))
        magnitude = np.abs(want).reshape(n, -1).max(axis=1)
        raw = exact.get(name.removesuffix(".heatmap") + ".raw", want) if name.endswith(".heatmap") else want
        logits = np.abs(exact["logits"]).reshape(n, -1).max(axis=1)
        zero_images = np.abs(raw).reshape(n, -1).max(axis=1) <= ZERO_RTOL * np.maximum(logits, 1.0)
        explained = ours_err <= FLOAT32_FACTOR * theirs_err + FLOOR_RTOL * magnitude.max()
        if (explained | zero_images).all():
            if zero_images.any():
                zero.append(f"{name} (images {np.flatnonzero(zero_images).tolist()})")
            continue
        worst = int(np.argmax(ours_err - FLOAT32_FACTOR * theirs_err))
        left.append(f"{problem}; against torch in float64, image {worst} is off by {ours_err[worst]:.2e} in ONNX "
                    f"Runtime and {theirs_err[worst]:.2e} in torch float32")
    if zero:
        warnings.warn(f"maps zero to float32 rounding (below {ZERO_RTOL:.0e} of the logits), exported as they are: "
                      f"{', '.join(zero)}; their heatmaps are rounding noise", stacklevel=3)
    return left


def _float64_outputs(traced: Traced, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The traced graph's outputs with every float32 tensor and dtype in it taken as float64 (its
    parameters, inputs and constants, and the dtype arguments of its casts and factories)."""
    with torch.no_grad(), _Float64():
        outputs = traced.graph(traced.params, *feeds.values())
    return {name: out.numpy() for name, out in zip(traced.output_names, outputs, strict=True)}


class _Float64(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        def up(x):
            if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
                return x.double()
            return torch.float64 if x is torch.float32 else x

        args, kwargs = tree_map(up, (args, kwargs or {}))
        return func(*args, **kwargs)
