"""The extra inputs that path and noise methods run the model on, built inside the graph.

Integrated gradients (Sundararajan et al.) evaluates the gradient at points on the straight line from a
baseline to the image; SmoothGrad (Smilkov et al.) at noisy copies of the image.  Both are built here as
torch ops, so the points are made and run as one batch inside the exported graph.  The conventions (the
integration rules, the order of the samples) are captum's, so its IntegratedGradients and NoiseTunnel
are the references.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from onnx_explain.core.inputs import check_count

INTEGRATION_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
# Each integration step and each noisy copy is one more forward and backward pass per image in every run of
# the file, and float32 maps gain nothing from thousands of them; Gauss-Legendre's rule also costs steps^3 to
# build (20000 steps: minutes).
MAX_STEPS = 4096
MAX_SAMPLES = 4096
_PRIME = 2**31 - 1
# (K, C) of each round h -> h (h + K) + C mod _PRIME; below 2^30, so h (h + K) + C < 2^63 fits in int64
_ROUNDS = ((0x2C1B3C6D, 0x3C6EF35F), (0x297A2D39, 0x1B873593), (0x045D9F3B, 0x27D4EB2F))


def integration_rule(method: str, steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights): the points on [0, 1] and their weights, as captum's approximation_parameters."""
    steps = check_steps(check_integration(method), steps)
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (x + 1)).tolist(), (0.5 * w).tolist()
    weights = [1 / steps] * steps
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, steps).tolist(), weights
    start, stop = {"riemann_left": (0, 1 - 1 / steps), "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
                   "riemann_right": (1 / steps, 1)}[method]
    return torch.linspace(start, stop, steps).tolist(), weights


def check_integration(method: object) -> str:
    """The name of an integration rule (export_explainer's ig_method).

    Raises:
        ValueError: not one of INTEGRATION_METHODS.
    """
    if not isinstance(method, str) or method not in INTEGRATION_METHODS:
        raise ValueError(f"unknown integration method {method!r} (ig_method); expected one of {INTEGRATION_METHODS}")
    return method


def check_steps(method: str, steps: object) -> int:
    """The integration steps of `method` (export_explainer's ig_steps): an integer from the rule's least
    (1 for Gauss-Legendre, 2 for the Riemann sums, which need both ends) to MAX_STEPS.

    Raises:
        ValueError: not an integer (bools refused), or out of that range.
    """
    least = 1 if method == "gausslegendre" else 2
    steps = check_count("ig_steps", steps)
    if steps < least:
        raise ValueError(f"ig_steps must be from {least} to {MAX_STEPS} for {method}, got {steps}: a Riemann sum "
                         "needs both ends of the path")
    if steps > MAX_STEPS:
        raise ValueError(f"ig_steps must be from {least} to {MAX_STEPS} for {method}, got {steps}: each step is one "
                         "more forward and backward pass per image in every run of the file")
    return steps


def check_samples(samples: object) -> int:
    """SmoothGrad's noisy copies per image (export_explainer's noise_samples): an integer from 1 to MAX_SAMPLES.

    Raises:
        ValueError: not an integer (bools refused), or out of that range.
    """
    samples = check_count("noise_samples", samples)
    if samples > MAX_SAMPLES:
        raise ValueError(f"noise_samples must be from 1 to {MAX_SAMPLES}, got {samples}: each noisy copy is one "
                         "more forward and backward pass per image in every run of the file")
    return samples


def noisy(images: torch.Tensor, noise_std: torch.Tensor, seed: torch.Tensor, samples: int) -> torch.Tensor:
    """[N, S, C, H, W]: image + noise_std * n_s, with the S draws n_s standard normal from `seed` and the
    same for every image, so an image's map does not depend on the rest of its batch (nor on the chunks
    the runtime splits a call into).  Flattened, the samples are image-major (row n * S + s), as captum's
    NoiseTunnel lays them out."""
    return images[:, None] + noise_std * standard_normal(seed, (samples, *images.shape[1:]))


def on_path(inputs: torch.Tensor, baselines: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """[N, S, m, C, H, W]: baseline + alpha_i (input - baseline) for each input [N, S, C, H, W]."""
    return baselines[:, None, None] + _along(alphas, inputs, 6, 2) * (inputs - baselines[:, None])[:, :, None]


def weighted_sum(grads: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """sum_i w_i grads[:, :, i] over the step axis of [N, S, m, C, H, W]."""
    return (grads * _along(weights, grads, 6, 2)).sum(dim=2)


def _along(values: list[float], like: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """The values laid along `dim` of a rank-`rank` tensor, built from arange so that they survive export
    as constants (see onnx_explain.exporters.decompositions._pool_extents), which ONNX Runtime folds at load."""
    steps = torch.arange(len(values), dtype=like.dtype)
    column = sum(((steps == i).to(like.dtype) * v for i, v in enumerate(values)), torch.zeros_like(steps))
    return column.reshape([len(values) if d == dim else 1 for d in range(rank)])


def standard_normal(seed: torch.Tensor, shape) -> torch.Tensor:
    """Standard normal float32 values of `shape`, a pure function of the int64 `seed` (Box-Muller on an
    integer hash of each element's index).  ONNX Runtime's RandomNormal reseeds only per session, so a
    server would draw new noise on every call; a hash of the seed makes every run reproducible, and runs
    the same in torch and ONNX Runtime, so tests can hand the same noise to captum."""
    count = math.prod(shape)
    key = _hash(torch.remainder(seed.to(torch.int64), _PRIME))
    index = torch.arange(count * 2, dtype=torch.int64).reshape(count, 2)
    uniform = torch.remainder(_hash(torch.remainder(index + key, _PRIME)), 2**24)
    uniform = uniform.to(torch.float32)
    uniform = (uniform + 0.5) / 2**24  # in (0, 1): 24 bits are exact in float32
    u1, u2 = uniform.unbind(1)
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).reshape(shape)


def _hash(h: torch.Tensor) -> torch.Tensor:
    """An integer mixer on values in [0, 2^31 - 1): three rounds of h -> h (h + K) + C modulo the prime
    2^31 - 1, a quadratic map whose composition scatters consecutive indices.  Multiplication, addition
    and modulo only, all exact in int64: ONNX Runtime's CUDA provider has no kernels for the bitwise ops,
    and torch.onnx translates integer division through float32, which rounds values above 2^24."""
    for k, c in _ROUNDS:
        h = torch.remainder(h * (h + k) + c, _PRIME)
    return h
