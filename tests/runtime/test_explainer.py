"""The runtime on the shipped model: the result, dynamic batch, properties of the maps, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import references
import torch
from conftest import methods_for

from onnx_explain import Explainer, boxes, class_model, overlay, pointing_hits
from onnx_explain.exporters import export_explainer
from onnx_explain.models.shapenet import INPUT_SHAPE
from onnx_explain.models.shapes import CLASSES, TEST_SEED, make_shapes


@pytest.fixture(scope="module")
def shapenet(exported):
    return exported("shapenet")


@pytest.fixture(scope="module")
def held_out():
    return make_shapes(48, TEST_SEED)


def test_result_shapes_and_ranges(shapenet, held_out):
    result = shapenet.explainer.explain(held_out.images[:5])
    assert result.logits.shape == (5, len(CLASSES)) and result.targets.dtype == np.int64
    assert set(result.methods) == set(methods_for("shapenet"))
    for method in result.methods:
        heat = result[method].heatmap
        assert heat.shape == (5, 64, 64) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    assert result["saliency"].raw.shape == (5, 3, 64, 64)
    assert result["gradcam"].raw.shape == (5, 16, 16)
    assert result["gradcam", "features"] is result["gradcam"]
    assert result.labels == [CLASSES[t] for t in result.targets]


def test_dynamic_batch_gives_the_same_maps(shapenet, held_out):
    whole = shapenet.explainer.explain(held_out.images[:7])
    for i in (0, 6):
        single = shapenet.explainer.explain(held_out.images[i:i + 1])
        np.testing.assert_allclose(single["gradcam"].heatmap[0], whole["gradcam"].heatmap[i], atol=1e-5)
        np.testing.assert_allclose(single.logits[0], whole.logits[i], rtol=1e-5, atol=1e-5)


def test_maps_are_not_frozen(shapenet, held_out):
    """Maps depend on the image and on the target class (not folded from the export example)."""
    a = shapenet.explainer.explain(held_out.images[:2])
    for method in a.methods:
        assert np.abs(a[method].heatmap[0] - a[method].heatmap[1]).max() > 0.1
    one_class = [shapenet.explainer.explain(held_out.images[:1], targets=[t]) for t in range(len(CLASSES))]
    for method in ("saliency", "gradcam"):
        maps = [r[method].raw[0] for r in one_class]
        assert any(np.abs(maps[0] - m).max() > 1e-3 * np.abs(maps[0]).max() for m in maps[1:])


def test_flat_input_and_zero_gradient_give_finite_maps(shapenet):
    flat = np.full((2, 3, 64, 64), 0.5, np.float32)
    result = shapenet.explainer.explain(flat)
    for method in result.methods:
        assert np.isfinite(result[method].heatmap).all()
    # A class whose gradient at the layer is zero everywhere: gradcam raw is all zero, heatmap 0 not NaN.
    zeros = np.zeros((1, 3, 64, 64), np.float32)
    assert np.isfinite(shapenet.explainer.explain(zeros)["gradcam"].heatmap).all()


def test_shipped_model_points_at_the_objects(shapenet, held_out):
    result = shapenet.explainer.explain(held_out.images)
    assert (result.targets == held_out.labels).mean() >= 0.95
    assert pointing_hits(result["gradcam"].heatmap, held_out.boxes).mean() >= 0.9


def test_overlay(held_out):
    heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = overlay(held_out.images[0], heat, alpha=0.4)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    small = overlay(held_out.images[0], heat[::4, ::4])
    assert small.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay(held_out.images[0], heat, alpha=2)


@pytest.mark.parametrize(("images", "message"), [
    (np.zeros((2, 3, 32, 32), np.float32), r"float32 \[N, 3, 64, 64\], got shape \[2, 3, 32, 32\]"),
    (np.zeros((3, 64, 64), np.float32), r"images\[None\]"),
    (np.zeros((1, 3, 64, 64), np.float64), "got dtype float64"),
    (np.zeros((1, 3, 64, 64), np.uint8), "got dtype uint8"),
    ([[1.0]], "numpy array"),
])
def test_bad_images(shapenet, images, message):
    with pytest.raises(ValueError, match=message):
        shapenet.explainer.explain(images)


def test_nan_and_inf_images(shapenet):
    x = np.zeros((3, 3, 64, 64), np.float32)
    x[1, 0, 5, 5] = np.nan
    x[2, 1, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf values \(2 of 3 images\)"):
        shapenet.explainer.explain(x)


@pytest.mark.parametrize(("targets", "message"), [
    ([4, 0], r"targets \[4\] out of range; expected -1 \(predicted class\) or 0..3"),
    ([-2, 0], "out of range"),
    ([0], r"one class per image"),
    ([0.5, 1.0], "integer class indices"),
])
def test_bad_targets(shapenet, targets, message):
    with pytest.raises(ValueError, match=message):
        shapenet.explainer.explain(np.zeros((2, 3, 64, 64), np.float32), targets=targets)


def test_unknown_method(shapenet):
    with pytest.raises(ValueError, match=r"unknown methods \['lime'\]; shapenet.onnx was exported with"):
        shapenet.explainer.explain(np.zeros((1, 3, 64, 64), np.float32), methods=["lime"])


def test_bad_files(tmp_path, shapenet):
    with pytest.raises(FileNotFoundError, match="no explanation graph"):
        Explainer(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="not a valid ONNX file"):
        Explainer(corrupt)
    plain = onnx.load(str(shapenet.path))
    del plain.metadata_props[:]
    stripped = tmp_path / "plain.onnx"
    onnx.save(plain, str(stripped))
    with pytest.raises(ValueError, match="not an onnx-explain explanation graph"):
        Explainer(stripped)
    with pytest.raises(ValueError, match="not available"):
        Explainer(shapenet.path, providers=["NoSuchExecutionProvider"])


def test_counterfactual_flips_the_gradient_at_the_layer(shapenet, held_out):
    x = held_out.images[:4]
    plain = shapenet.explainer.explain(x)
    against = shapenet.explainer.explain(x, counterfactual=True)
    act, grad = references.layer_activation_and_gradient(shapenet.model, shapenet.layer, x, plain.targets)
    want = np.maximum((-grad.mean(axis=(2, 3), keepdims=True) * act).sum(axis=1), 0)
    np.testing.assert_allclose(against["gradcam"].raw, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    hires, hires_against = plain["hirescam"].raw, against["hirescam"].raw
    assert np.minimum(hires, hires_against).max() == 0 and (hires + hires_against).max() > 0
    for method in ("saliency", "guided_backprop", "deconvnet", "gradient_x_input"):  # no layer gradient
        np.testing.assert_array_equal(plain[method].raw, against[method].raw)


def test_counterfactual_default_is_set_at_export(tmp_path, shapenet, held_out):
    path = tmp_path / "against.onnx"
    export_explainer(shapenet.model, path, input_shape=INPUT_SHAPE, layers=[shapenet.layer], methods=["gradcam"],
                     counterfactual=True)
    default = Explainer(path, providers="cpu").explain(held_out.images[:3])
    asked = shapenet.explainer.explain(held_out.images[:3], methods=["gradcam"], counterfactual=True)
    np.testing.assert_allclose(default["gradcam"].raw, asked["gradcam"].raw, rtol=1e-5, atol=1e-6)


def test_layers_fuse_as_pytorch_grad_cam_aggregates_them(tmp_path, shapenet, held_out):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = ["features.6", shapenet.layer]
    path = tmp_path / "two.onnx"
    export_explainer(shapenet.model, path, input_shape=INPUT_SHAPE, layers=layers, methods=["gradcam"])
    result = Explainer(path, providers="cpu").explain(held_out.images[:4])
    fused = result.fused("gradcam")
    assert fused.layer == "features.6+features" and fused.raw.shape == (4, 2, 64, 64)
    modules = dict(shapenet.model.named_modules())
    with GradCAM(model=shapenet.model, target_layers=[modules[n] for n in layers]) as cam:
        targets = [ClassifierOutputTarget(int(t)) for t in result.targets]
        want = cam(torch.from_numpy(held_out.images[:4]), targets=targets)
    assert np.abs(fused.heatmap - want).max() <= 1e-5
    with pytest.raises(KeyError, match="input method"):
        shapenet.explainer.explain(held_out.images[:1]).fused("saliency")


def test_boxes_localise_the_objects(shapenet, held_out):
    result = shapenet.explainer.explain(held_out.images)
    found = boxes(result["gradcam"].heatmap, threshold=0.2)
    truth = held_out.boxes
    overlap = (np.minimum(found[:, 2], truth[:, 2]) >= np.maximum(found[:, 0], truth[:, 0])) & \
              (np.minimum(found[:, 3], truth[:, 3]) >= np.maximum(found[:, 1], truth[:, 1]))
    assert found.shape == (len(truth), 4) and overlap.mean() >= 0.9


def test_boxes_pick_the_largest_region():
    heat = np.zeros((2, 20, 30), np.float32)
    heat[0, 2:5, 3:6] = 1.0  # small and brightest
    heat[0, 10:18, 12:25] = 0.8  # large
    np.testing.assert_array_equal(boxes(heat, threshold=0.5), [[12, 10, 24, 17], [0, 0, 29, 19]])
    np.testing.assert_array_equal(boxes(heat[0], threshold=0.9), [3, 2, 5, 4])
    with pytest.raises(ValueError, match="threshold"):
        boxes(heat, threshold=0)
    with pytest.raises(ValueError, match=r"\[H, W\], \[N, H, W\] or \[N, k, H, W\]"):
        boxes(np.zeros(5))


def test_class_model_raises_the_class_score(shapenet):
    result = class_model(shapenet.explainer, target=1, steps=20, lr=0.1, show_progress=False)
    assert result.image.shape == INPUT_SHAPE and result.scores.shape == (21,)
    assert result.scores[-1] > result.scores[0] + 1.0 and np.all(np.diff(result.scores) > 0)
    with pytest.raises(ValueError, match="target must be a class index"):
        class_model(shapenet.explainer, target=len(CLASSES))


def test_class_model_needs_the_saliency_gradient(tmp_path, shapenet):
    path = tmp_path / "cam.onnx"
    export_explainer(shapenet.model, path, input_shape=INPUT_SHAPE, layers=[shapenet.layer], methods=["gradcam"])
    with pytest.raises(ValueError, match="saliency"):
        class_model(Explainer(path, providers="cpu"), target=0)


def test_top_k_explains_several_classes_in_one_run(tmp_path, shapenet, held_out):
    path = tmp_path / "top2.onnx"
    info = export_explainer(shapenet.model, path, input_shape=INPUT_SHAPE, layers=[shapenet.layer],
                            methods=["gradcam", "saliency", "cam"], top_k=2)
    explainer = Explainer(path, providers="cpu")
    x = held_out.images[:3]
    result = explainer.explain(x)
    assert info.top_k == 2 and result.targets.shape == (3, 2) and len(result.labels[0]) == 2
    np.testing.assert_array_equal(result.targets, np.argsort(-result.logits, axis=1)[:, :2])
    assert result["gradcam"].heatmap.shape == (3, 2, 64, 64) and result["saliency"].raw.shape == (3, 2, 3, 64, 64)
    assert result.fused("gradcam").heatmap.shape == (3, 2, 64, 64)
    for j in range(2):
        single = shapenet.explainer.explain(x, targets=result.targets[:, j])
        for method in ("gradcam", "saliency", "cam"):
            want = single[method].raw
            np.testing.assert_allclose(result[method].raw[:, j], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    explicit = explainer.explain(x, targets=np.array([[0, 3]] * 3))
    np.testing.assert_array_equal(explicit.targets, [[0, 3]] * 3)
    with pytest.raises(ValueError, match=r"\[N, k\] = \[3, 2\]"):
        explainer.explain(x, targets=[0, 1, 2])
    with pytest.raises(ValueError, match="top_k must be between 1 and the number of classes"):
        export_explainer(shapenet.model, tmp_path / "bad.onnx", input_shape=INPUT_SHAPE, methods=["saliency"],
                         top_k=len(CLASSES) + 1)


@pytest.mark.parametrize("score", ["max", "sum"])
def test_feature_targets_reconstruct_a_channel(tmp_path, shapenet, held_out, score):
    layer, methods = "features.8", ["deconvnet", "gradient_x_input", "guided_backprop", "saliency"]
    path = tmp_path / f"feature-{score}.onnx"
    info = export_explainer(shapenet.model, path, input_shape=INPUT_SHAPE, methods=methods, feature_layer=layer,
                            feature_score=score)
    assert info.feature == {"layer": layer, "score": score, "channels": 64}
    explainer = Explainer(path, providers="cpu")
    x = held_out.images[:3]
    act = references.layer_output(shapenet.model, layer, x)
    per_channel = act.amax(dim=(2, 3)) if score == "max" else act.sum(dim=(2, 3))
    for targets in (None, np.array([5, 17, 63])):
        result = explainer.explain(x, targets=targets)
        want_channels = per_channel.argmax(dim=1).numpy() if targets is None else targets
        np.testing.assert_array_equal(result.targets, want_channels)
        assert result.labels[0] == f"{layer}[{want_channels[0]}]"
        for method, rule in (("saliency", "plain"), ("guided_backprop", "guided"), ("deconvnet", "deconvnet")):
            want = references.feature_gradient(rule, shapenet.model, layer, score, x, result.targets)
            np.testing.assert_allclose(result[method].raw, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        np.testing.assert_allclose(result["gradient_x_input"].raw, result["saliency"].raw * x, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"expected -1 \(predicted channel of features.8\) or 0..63"):
        explainer.explain(x, targets=[64, 0, 0])
    with pytest.raises(ValueError, match="class_model ascends one class's logit.*feature targets"):
        class_model(explainer, target=0)


def test_feature_targets_refuse_layer_methods_and_unknown_scores(tmp_path, shapenet):
    with pytest.raises(ValueError, match=r"feature targets explain a channel in input space.*gradcam"):
        export_explainer(shapenet.model, tmp_path / "f.onnx", input_shape=INPUT_SHAPE, layers=[shapenet.layer],
                         methods=["gradcam", "saliency"], feature_layer="features.8")
    with pytest.raises(ValueError, match="feature_score must be one of"):
        export_explainer(shapenet.model, tmp_path / "f.onnx", input_shape=INPUT_SHAPE, methods=["saliency"],
                         feature_layer="features.8", feature_score="mean")
