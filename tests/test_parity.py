"""Parity of every method with its reference, per (model x method), over batch 1 and 4 and predicted
and explicit targets, in ONNX Runtime at its default optimisation level.

Tolerance: `raw` within RTOL (1e-4) of the reference's largest magnitude, per image, on at least
EXACT_SHARE of the images; every image within KINK_RTOL.  The second bound exists because float32
rounding differs between ONNX Runtime and torch, and a pre-activation within rounding of zero can
fall on the other side of a ReLU (or a max-pool tie go the other way), which changes the backward pass
through that unit (see exporters/validate.py).  Measured: 1 image in 16 moves on vgg11_bn and
resnet18, 4 in 10 on densenet121 saliency, by at most 2e-2; every other image matches to about 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import references
import torch
from conftest import images

from exporters import METHODS
from exporters.validate import KINK_RTOL, RTOL, per_image_errors

EXACT_SHARE = 0.5
# pytorch-grad-cam resizes with cv2.resize, whose bilinear weights are rounded to fixed point: measured
# 3e-4 against exact bilinear on efficientnet_b0's 2x2 map (1e-6 on the others).
HEATMAP_ATOL = 1e-3
MODELS = ["resnet18", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0"]
CASES = [(1, "predicted"), (1, "explicit"), (4, "predicted"), (4, "explicit")]
# captum's GuidedBackprop rules nn.ReLU modules only; densenet121 also calls F.relu in forward(), so its
# reference rules every ReLU call site (as our exporter does).
CAPTUM_MISSES_RELUS = {"densenet121"}


def _reference(method: str, e, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    if method == "saliency":
        return references.saliency(e.model, x, targets)
    if method == "guided_backprop":
        if e.name in CAPTUM_MISSES_RELUS:
            return references.guided_backprop_every_relu(e.model, x, targets)
        return references.guided_backprop_captum(e.model, x, targets)
    if method == "gradcam":
        return references.gradcam_raw(e.model, e.layer, x, targets)
    raise AssertionError(f"no reference for {method}")


REFERENCED = ("saliency", "guided_backprop", "gradcam")


def test_every_method_has_a_reference():
    assert set(METHODS) == set(REFERENCED), f"methods without a parity test: {set(METHODS) - set(REFERENCED)}"


def _targets(kind: str, n: int) -> np.ndarray:
    return np.full(n, -1, np.int64) if kind == "predicted" else (np.arange(n) * 3 % 10).astype(np.int64)


@pytest.mark.parametrize("method", REFERENCED)
@pytest.mark.parametrize("model", MODELS)
def test_raw_matches_reference(exported, model, method):
    e = exported(model)
    errors = []
    for batch, kind in CASES:
        x, targets = images(batch, seed=batch), _targets(kind, batch)
        result = e.explainer.explain(x, methods=[method], targets=targets)
        logits = e.model(torch.from_numpy(x)).detach().numpy()
        resolved = np.where(targets < 0, logits.argmax(1), targets)
        np.testing.assert_array_equal(result.targets, resolved)
        assert per_image_errors(result.logits, logits).max() <= RTOL
        want = _reference(method, e, x, resolved)
        assert result[method].raw.shape == want.shape
        errors.extend(per_image_errors(result[method].raw, want))
    errors = np.array(errors)
    assert errors.max() <= KINK_RTOL, f"per-image errors {errors}"
    assert (errors <= RTOL).mean() >= EXACT_SHARE, f"per-image errors {errors}"


@pytest.mark.parametrize("model", MODELS)
def test_gradcam_heatmap_matches_pytorch_grad_cam(exported, model):
    e = exported(model)
    x = images(4, seed=7)
    result = e.explainer.explain(x, methods=["gradcam"])
    want = references.gradcam_heatmap(e.model, e.layer, x, result.targets)
    got = result["gradcam"].heatmap
    assert got.shape == want.shape == (4, 64, 64)
    errors = np.abs(got - want).reshape(4, -1).max(axis=1)
    assert errors.max() <= KINK_RTOL and (errors <= HEATMAP_ATOL).mean() >= 0.75, errors
