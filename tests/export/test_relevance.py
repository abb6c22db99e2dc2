"""The relevance and sampled methods beyond raw parity (tests/export/test_parity.py): their runtime inputs
(epsilon, baselines, seed, noise), the sums they promise, the DeepLIFT reference itself, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import references
import torch
from conftest import IG_STEPS, NOISE_SAMPLES, images

from onnx_explain import Explainer
from onnx_explain.exporters import export_explainer
from onnx_explain.exporters.errors import UnsupportedOpError
from onnx_explain.exporters.sampling import INTEGRATION_METHODS, integration_rule
from onnx_explain.exporters.validate import RTOL, per_image_errors

MODELS = ["shapenet", "resnet18"]


def _tiny(activation: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), activation, torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()


def _inputs(e, n: int = 3, seed: int = 5):
    x = images(n, seed) if e.name != "shapenet" else np.random.default_rng(seed).random((n, 3, 64, 64), np.float32)
    return x, np.arange(n, dtype=np.int64) % 5


def _logit_change(model, x, targets, baselines):
    with torch.no_grad():
        change = model(torch.from_numpy(x)) - model(torch.from_numpy(baselines))
    return change[np.arange(len(x)), targets].numpy()


@pytest.mark.parametrize("model", MODELS)
def test_lrp_epsilon_is_a_runtime_input(exported, model):
    """A large epsilon changes the map, and matches captum's EpsilonRule with that epsilon."""
    e = exported(model)
    x, t = _inputs(e)
    got = e.explainer.explain(x, methods="lrp_epsilon", targets=t, lrp_epsilon=0.25)["lrp_epsilon"]
    want = references.lrp_epsilon(e.model, x, t, epsilon=0.25)
    assert per_image_errors(got.raw, want).max() <= 1e-3  # measured below 1e-5; a kink moves an image
    default = e.explainer.explain(x, methods="lrp_epsilon", targets=t)["lrp_epsilon"]
    assert per_image_errors(default.raw, want).min() > 1e-2  # epsilon matters at this size
    with torch.no_grad():
        scores = e.model(torch.from_numpy(x))[np.arange(len(x)), t].numpy()
    np.testing.assert_allclose(got.delta, got.raw.sum(axis=(1, 2, 3)) - scores, atol=1e-4 * np.abs(scores).max())


@pytest.mark.parametrize("model", MODELS)
def test_lrp_with_zero_epsilon_is_gradient_times_input(exported, model):
    """LRP-0: every factor z / (z + 0) is 1, and 0 (not 0 / 0) where a layer's output is exactly 0, as
    after a ReLU whose input was negative."""
    e = exported(model)
    x, t = _inputs(e)
    got = e.explainer.explain(x, methods=["lrp_epsilon", "gradient_x_input"], targets=t, lrp_epsilon=0.0)
    assert np.isfinite(got["lrp_epsilon"].raw).all()
    assert per_image_errors(got["lrp_epsilon"].raw, got["gradient_x_input"].raw).max() <= 1e-5


class _ChangedBeforeItsReLU(torch.nn.Module):
    """A convolution's output changed in place between its stabiliser and its ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(144, 3)

    def forward(self, x):
        y = self.conv(x)
        y.add_(0.5)
        return self.fc(torch.relu(y).flatten(1))


def test_lrp_relu_reads_a_layer_output_changed_in_place(tmp_path):
    """The ReLU that takes its layer's stabiliser along reads a copy of the layer's output; after an
    in-place change it must read the changed tensor instead (the forward pass stays the model's)."""
    model = _ChangedBeforeItsReLU().eval()
    export_explainer(model, tmp_path / "x.onnx", input_shape=(3, 8, 8), methods=["lrp_epsilon"])
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = Explainer(tmp_path / "x.onnx").explain(x)
    with torch.no_grad():
        np.testing.assert_allclose(got.logits, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_deeplift_sums_to_the_logit_change_from_any_baseline(exported, model):
    e = exported(model)
    x, t = _inputs(e)
    baseline = np.random.default_rng(1).random((1, 3, 64, 64), np.float32) * 0.5
    got = e.explainer.explain(x, methods="deeplift", targets=t, baselines=baseline)["deeplift"]
    change = _logit_change(e.model, x, t, baseline)
    scale = np.abs(change).max()
    np.testing.assert_allclose(got.raw.sum(axis=(1, 2, 3)), change, atol=1e-4 * scale)
    assert np.abs(got.delta).max() <= 1e-4 * scale
    want = references.deeplift_secant(e.model, x, t, baseline)
    assert np.median(per_image_errors(got.raw, want)) <= RTOL


@pytest.mark.parametrize("model", ["resnet18", "vgg11_bn"])
def test_deeplift_reference_matches_captum_where_captum_holds(model):
    """The eager reference (tests/references.deeplift_secant) equals captum's DeepLift on copies whose
    max pools are average pools, where captum's rules are right."""
    from conftest import make_model

    def average(m: torch.nn.MaxPool2d) -> torch.nn.Module:
        return torch.nn.AvgPool2d(m.kernel_size, m.stride)

    net = references.replaced(make_model(model), torch.nn.MaxPool2d, average)
    x, t = images(2, seed=3)[:, :, :32, :32].copy(), np.array([1, 4])
    baseline = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32) * 0.3
    want = references.deeplift(net, x, t, baseline)
    assert per_image_errors(references.deeplift_secant(net, x, t, baseline), want).max() <= 1e-5


def test_integrated_gradients_delta_and_baselines(exported):
    e = exported("resnet18")
    x, t = _inputs(e, n=2)
    baseline = np.full((3, 64, 64), 0.2, np.float32)
    got = e.explainer.explain(x, methods="integrated_gradients", targets=t, baselines=baseline)
    ig = got["integrated_gradients"]
    want = references.integrated_gradients(e.model, x, t, baseline[None], IG_STEPS, "gausslegendre")
    assert per_image_errors(ig.raw, want).max() <= 1e-3
    change = _logit_change(e.model, x, t, baseline[None])
    np.testing.assert_allclose(ig.delta, ig.raw.sum(axis=(1, 2, 3)) - change, atol=1e-4 * np.abs(change).max())


def test_per_image_baselines_run_image_by_image(exported):
    e = exported("shapenet")
    x, t = _inputs(e, n=3)
    baselines = np.random.default_rng(3).random((3, 3, 64, 64), np.float32)
    together = e.explainer.explain(x, methods=["deeplift", "integrated_gradients"], targets=t, baselines=baselines)
    for i in range(3):
        alone = e.explainer.explain(x[i:i + 1], methods=["deeplift", "integrated_gradients"], targets=t[i:i + 1],
                                    baselines=baselines[i])
        for method in ("deeplift", "integrated_gradients"):
            np.testing.assert_allclose(together[method].raw[i], alone[method].raw[0], rtol=1e-5, atol=1e-7)


def test_integration_rules_are_captums():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for method in INTEGRATION_METHODS:
        step_sizes, alphas = approximation_parameters(method)
        got_alphas, got_weights = integration_rule(method, 7)
        np.testing.assert_allclose(got_alphas, alphas(7), atol=1e-7)
        np.testing.assert_allclose(got_weights, step_sizes(7), atol=1e-7)


def test_noise_is_reproducible_and_scaled(exported):
    e = exported("shapenet")
    x, t = _inputs(e, n=2)
    methods = ["smoothgrad", "vargrad", "saliency"]
    a = e.explainer.explain(x, methods=methods, targets=t, seed=7)
    b = e.explainer.explain(x, methods=methods, targets=t, seed=7)
    c = e.explainer.explain(x, methods=methods, targets=t, seed=8)
    np.testing.assert_array_equal(a["smoothgrad"].raw, b["smoothgrad"].raw)
    assert np.abs(a["smoothgrad"].raw - c["smoothgrad"].raw).max() > 1e-3 * np.abs(a["smoothgrad"].raw).max()
    quiet = e.explainer.explain(x, methods=methods, targets=t, noise_std=0.0)
    np.testing.assert_allclose(quiet["smoothgrad"].raw, quiet["saliency"].raw, rtol=1e-5, atol=1e-8)
    assert np.abs(quiet["vargrad"].raw).max() <= 1e-6 * np.abs(quiet["saliency"].raw).max() ** 2


def test_large_calls_run_in_chunks_that_change_no_map(exported):
    e = exported("shapenet")
    assert e.info.points == 1 + IG_STEPS + NOISE_SAMPLES + NOISE_SAMPLES * IG_STEPS  # ig_* copies walk the path
    x, t = _inputs(e, n=5)
    t = t % 4  # the shipped model has four classes
    whole = Explainer(e.path, providers="cpu", max_images_per_run=None)
    pairs = Explainer(e.path, providers="cpu", max_images_per_run=2 * e.info.points)
    assert whole.images_per_run(5) == 5 and pairs.images_per_run(5) == 2 and e.explainer.images_per_run(5) == 1
    a, b = whole.explain(x, targets=t, seed=3), pairs.explain(x, targets=t, seed=3)
    alone = whole.explain(x[4:], targets=t[4:], seed=3)  # the same noise draws, whatever the batch
    for method in a.methods:
        scale = np.abs(a[method].raw).max()
        np.testing.assert_allclose(b[method].raw, a[method].raw, rtol=1e-5, atol=1e-6 * scale, err_msg=method)
        np.testing.assert_allclose(alone[method].raw[0], a[method].raw[4], rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=method)
    with pytest.raises(ValueError, match="max_images_per_run must be an integer from 1"):
        Explainer(e.path, max_images_per_run=0)


def test_bad_runtime_inputs(exported):
    e = exported("shapenet")
    x, _ = _inputs(e, n=2)
    with pytest.raises(ValueError, match="baselines must be"):
        e.explainer.explain(x, methods="deeplift", baselines=np.zeros((3, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        e.explainer.explain(x, methods="deeplift", baselines=np.full((3, 64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="seed must be an integer"):
        e.explainer.explain(x, methods="smoothgrad", seed=1.5)
    with pytest.raises(ValueError, match="noise_std must be"):
        e.explainer.explain(x, methods="smoothgrad", noise_std=-1.0)


def test_inputs_a_file_does_not_take(tmp_path):
    path = tmp_path / "plain.onnx"
    export_explainer(_tiny(torch.nn.ReLU()), path, input_shape=(3, 8, 8), methods=["saliency"])
    from onnx_explain import Explainer

    with pytest.raises(ValueError, match="no baselines input"):
        Explainer(path).explain(np.zeros((1, 3, 8, 8), np.float32), baselines=0.0)


def test_ops_without_a_rule_are_named(tmp_path):
    for method in ("lrp_epsilon", "deeplift"):
        with pytest.raises(UnsupportedOpError, match=rf"{method} has no rule for aten.sigmoid \(from module '1'"):
            export_explainer(_tiny(torch.nn.Sigmoid()), tmp_path / "x.onnx", input_shape=(3, 8, 8), methods=[method])


def test_feature_targets_refuse_score_methods(tmp_path):
    with pytest.raises(ValueError, match="explain a class score"):
        export_explainer(_tiny(torch.nn.ReLU()), tmp_path / "x.onnx", input_shape=(3, 8, 8), methods=["deeplift"],
                         feature_layer="0")


def test_deeplift_rescale_slope_case_by_case():
    """The ReLU's multiplier: the secant (relu(x) - relu(x')) / (x - x') wherever the input moved, tiny
    moves of either sign included (captum switches to the plain gradient below 1e-10), and the plain
    gradient's [x > 0] where it did not (0/0 otherwise)."""
    from onnx_explain.exporters.relevance import _SiteReLU
    from onnx_explain.exporters.rules import relu_rule

    x = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 0.0, 4e-11, -4e-11, 1e-3, 1.0, 2e-30, 0.7, -0.7])
    ref = torch.tensor([2.0, -1.0, -0.5, 1.0, -3.0, 0.0, -3e-11, 3e-11, 1e-3 + 5e-11, -1.0, -1e-30, 0.7, -0.7])
    delta = x - ref
    want = torch.where(delta == 0, (x > 0).float(), (torch.relu(x) - torch.relu(ref)) / delta)
    leaf = x.clone().requires_grad_()
    with relu_rule("deeplift"):
        _SiteReLU.apply(leaf, ref, None).sum().backward()
    torch.testing.assert_close(leaf.grad, want, rtol=1e-6, atol=1e-9)


def test_deeplift_max_pool_rule_case_by_case():
    """The max pool's rule against the eager reference's (tests/references._SecantMaxPool) on overlapping
    3x3 / stride-2 windows, with ties and an image that equals the reference on half its positions."""
    from onnx_explain.exporters.relevance import _RescaleMaxPool
    from onnx_explain.exporters.rules import relu_rule

    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(1, 2, 9, 9, generator=gen).round(decimals=1)  # rounded: ties within windows
    x = torch.randn(2, 2, 9, 9, generator=gen).round(decimals=1)
    x[:, :, :5] = ref[:, :, :5]
    grad = torch.randn(2, 2, 4, 4, generator=gen)
    pool = ([3, 3], [2, 2], [0, 0], [1, 1], False)
    leaf = x.clone().requires_grad_()
    with relu_rule("deeplift"):
        (_RescaleMaxPool.apply(leaf, ref, *pool) * grad).sum().backward()
    both = torch.cat([x, ref.expand_as(x)]).requires_grad_()
    (references._SecantMaxPool.apply(both, pool[:2] + (0, 1, False))[:2] * grad).sum().backward()
    torch.testing.assert_close(leaf.grad, both.grad[:2], rtol=1e-6, atol=1e-6)
