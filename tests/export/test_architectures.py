"""More torchvision classifiers beyond the parity matrix: each exports (the exporter validates it against
torch in ONNX Runtime) and its saliency and Grad-CAM agree with torch autograd; vgg11's epsilon-LRP
agrees with captum's LRP."""

from __future__ import annotations

import numpy as np
import pytest
import references
import torch
from conftest import images

from onnx_explain.exporters.validate import agreement_problem

MORE_MODELS = ["vgg11"]


@pytest.mark.parametrize("model", MORE_MODELS)
def test_exports_and_matches_autograd(exported, model):
    e = exported(model)
    x = images(4, seed=3)
    result = e.explainer.explain(x, methods=["saliency", "gradcam"])
    logits = e.model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(result.targets, logits.argmax(1))
    saliency = references.saliency(e.model, x, result.targets)
    assert agreement_problem("saliency", result["saliency"].raw, saliency) is None
    gradcam = references.cam_family_raw("gradcam", e.model, e.layer, x, result.targets)
    assert agreement_problem("gradcam", result["gradcam"].raw, gradcam) is None


@pytest.mark.parametrize("epsilon", [None, 0.25])
def test_vgg11_lrp_epsilon_matches_captum(exported, epsilon):
    e = exported("vgg11")
    x, targets = images(4, seed=4), np.array([0, 3, 6, 9])
    got = e.explainer.explain(x, methods="lrp_epsilon", targets=targets, lrp_epsilon=epsilon)["lrp_epsilon"].raw
    want = references.lrp_epsilon(e.model, x, targets, **({"epsilon": epsilon} if epsilon else {}))
    assert agreement_problem("lrp_epsilon", got, want) is None
