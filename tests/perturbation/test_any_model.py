"""Pure-inference methods on ONNX classifiers from anywhere: parity with captum Occlusion and
pytorch-grad-cam's EigenCAM, ScoreCAM and AblationCAM, RISE against its formula, layouts, fixed
batches, preprocessing inside the model, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from any_models import Preprocessed, WithSoftmax, calibrated, handmade, torch_export
from conftest import make_model

import onnx_explain as ox

SIZE = 32
RTOL = 1e-4  # of the reference's largest magnitude
HEATMAP_ATOL = 1e-3  # pytorch-grad-cam resizes with cv2's fixed-point bilinear, as we do; 1e-3 leaves room
CAM_LAYERS = {"resnet18": "layer3", "mobilenet_v2": "net.features.13"}  # 2x2 at 32x32


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """name -> (torch module, path of its plain torch.onnx.export); mobilenet_v2 normalises inside."""
    directory = tmp_path_factory.mktemp("any")
    built = {"resnet18": make_model("resnet18"),
             "mobilenet_v2": Preprocessed(calibrated(make_model("mobilenet_v2"), SIZE)).eval()}
    return {name: (net, torch_export(net, directory / f"{name}.onnx", SIZE)) for name, net in built.items()}


def images(n: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def plain_scores(path_or_proto, x: np.ndarray) -> np.ndarray:
    model = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_occlusion_matches_captum(nets, name):
    from captum.attr import Occlusion

    net, path = nets[name]
    x, targets = images(), np.array([3, -1])
    result = ox.occlusion(path, x, window=8, stride=4, score="logit", targets=targets)
    assert result.targets[0] == 3 and result.targets[1] == plain_scores(path, x)[1].argmax()
    assert np.allclose(result.logits, plain_scores(path, x), atol=1e-5)
    got = result["occlusion"]
    want = Occlusion(net).attribute(torch.from_numpy(x), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                    baselines=0, target=torch.from_numpy(result.targets))[:, 0].numpy()
    assert relative(got.raw, want) < RTOL
    assert got.grid.shape == (2, 7, 7) and got.heatmap.shape == (2, SIZE, SIZE)
    assert got.heatmap.min() >= 0 and np.isclose(got.heatmap.max(), 1, atol=1e-5)


def occluded_reference(path, x, window, stride, fill, target) -> tuple[np.ndarray, np.ndarray]:
    """(grid, raw) from plain runs of the model, one occluded copy at a time."""
    base = plain_scores(path, x[None])[0, target]
    size = x.shape[-1]
    starts = range(0, size - window + 1, stride)
    grid = np.zeros((len(starts), len(starts)), np.float32)
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for i, r in enumerate(starts):
        for j, c in enumerate(starts):
            y = x.copy()
            y[:, r:r + window, c:c + window] = fill[:, r:r + window, c:c + window]
            grid[i, j] = base - plain_scores(path, y[None])[0, target]
            total[r:r + window, c:c + window] += grid[i, j]
            count[r:r + window, c:c + window] += 1
    return grid, np.divide(total, count, out=np.zeros_like(total), where=count > 0)


@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_occlusion_baselines_and_uncovered_pixels(nets, baseline):
    _, path = nets["resnet18"]
    x = images(1)
    window, stride = 12, 8  # windows start at 0, 8, 16: the last 4 rows and columns are never covered
    result = ox.occlusion(path, x, window=window, stride=stride, baseline=baseline, score="logit")
    got = result["occlusion"]
    if baseline == "mean":
        fill = np.broadcast_to(x[0].mean(axis=(1, 2), keepdims=True), x[0].shape)
    else:
        sigma = window / 2
        k = 2 * int(np.ceil(2 * sigma)) + 1
        fill = cv2.GaussianBlur(x[0].transpose(1, 2, 0), (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
        fill = fill.transpose(2, 0, 1)
    grid, raw = occluded_reference(path, x[0], window, stride, fill, int(result.targets[0]))
    assert relative(got.grid[0], grid) < RTOL
    assert relative(got.raw[0], raw) < RTOL
    assert np.all(got.raw[0, 28:] == 0) and np.all(got.raw[0, :, 28:] == 0)


def test_score_prob_and_softmax_in_the_model(tmp_path):
    torch.manual_seed(0)
    net = make_model("resnet18")
    plain = torch_export(net, tmp_path / "plain.onnx", SIZE)
    soft = torch_export(WithSoftmax(net), tmp_path / "soft.onnx", SIZE)
    x = images()
    kwargs = dict(window=16, stride=8, targets=[1, 2])
    logit_plain = ox.occlusion(plain, x, score="logit", **kwargs)
    logit_soft = ox.occlusion(soft, x, score="logit", **kwargs)  # the final Softmax is looked through
    assert relative(logit_soft["occlusion"].raw, logit_plain["occlusion"].raw) < RTOL
    assert np.allclose(logit_soft.logits, plain_scores(plain, x), atol=1e-5)  # logits, not probabilities
    prob_plain, prob_soft = ox.occlusion(plain, x, **kwargs), ox.occlusion(soft, x, **kwargs)
    assert relative(prob_soft["occlusion"].raw, prob_plain["occlusion"].raw) < RTOL
    assert np.allclose(prob_soft.logits, logit_soft.logits)
    prob_drops, logit_drops = prob_plain["occlusion"].grid, logit_plain["occlusion"].grid
    assert np.abs(prob_drops).max() <= 1 and not np.allclose(prob_drops, logit_drops)


def test_nhwc_model_written_by_hand():
    x = images(2, 16)
    nchw, nhwc = ox.classifier(handmade("NCHW")), ox.classifier(handmade("NHWC"))
    assert (nchw.layout, nhwc.layout) == ("NCHW", "NHWC")
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for method, kwargs in ((ox.occlusion, dict(window=4, stride=2, baseline="blur")),
                           (ox.rise, dict(n_masks=50, cell=4))):
        a, b = method(nchw, x, **kwargs)[method.__name__], method(nhwc, x_last, **kwargs)[method.__name__]
        assert relative(b.raw, a.raw) < RTOL, method.__name__
    for cam in (ox.eigencam, ox.scorecam, ox.ablationcam):  # the activations stay NCHW inside this model
        a, b = cam(nchw, x, "act")[cam.__name__], cam(nhwc, x_last, "act", layer_layout="NCHW")[cam.__name__]
        assert relative(b.raw, a.raw) < RTOL, cam.__name__


def test_fixed_batch_is_padded_and_chunked(nets, tmp_path):
    net, dynamic = nets["resnet18"]
    fixed = torch_export(net, tmp_path / "fixed.onnx", SIZE, batch=4)
    assert ox.classifier(fixed).batch == 4
    x = images(3)
    want = ox.occlusion(dynamic, x, window=16, stride=8, score="logit")["occlusion"]
    got = ox.occlusion(fixed, x, window=16, stride=8, score="logit", batch_size=8)["occlusion"]
    assert relative(got.raw, want.raw) < RTOL
    fixed_cam, dynamic_cam = ox.ablationcam(fixed, x, "layer4"), ox.ablationcam(dynamic, x, "layer4")
    assert relative(fixed_cam["ablationcam"].raw, dynamic_cam["ablationcam"].raw) < RTOL


def test_rise_is_its_formula_on_its_masks(nets):
    _, path = nets["resnet18"]
    x = images()
    result = ox.rise(path, x, n_masks=40, cell=8, p=0.5, seed=7, score="logit", batch_size=16)
    got = result["rise"]
    masks = ox.rise_masks((SIZE, SIZE), n_masks=40, cell=8, p=0.5, seed=7)
    assert masks.shape == (40, SIZE, SIZE) and 0.3 < masks.mean() < 0.7 and masks.min() >= 0 and masks.max() <= 1
    for n in range(2):
        scores = plain_scores(path, x[n][None] * masks[:, None])[:, result.targets[n]]
        want = np.einsum("m,mhw->hw", scores, masks) / (40 * 0.5)
        assert relative(got.raw[n], want) < RTOL
    again = ox.rise(path, x, n_masks=40, cell=8, p=0.5, seed=7, score="logit", batch_size=16)["rise"]
    other = ox.rise(path, x, n_masks=40, cell=8, p=0.5, seed=8, score="logit")["rise"]
    assert np.array_equal(again.raw, got.raw) and not np.allclose(other.raw, got.raw)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("method", ["eigencam", "scorecam", "ablationcam"])
def test_activation_cams_match_pytorch_grad_cam(nets, name, method):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from references import layer_output

    net, path = nets[name]
    layer = CAM_LAYERS[name]
    x = images()
    result = getattr(ox, method)(path, x, layer)
    got = result[method]
    module = dict(net.named_modules())[layer]
    kind = {"eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}[method]
    targets = [ClassifierOutputTarget(int(t)) for t in result.targets]
    with kind(model=net, target_layers=[module]) as cam:
        heatmap = cam(torch.from_numpy(x), targets=targets)
        activations = layer_output(net, layer, x).numpy()
        raw = np.maximum(cam.get_cam_image(torch.from_numpy(x), module, targets, activations, None, False), 0)
    assert relative(np.maximum(got.raw, 0), raw) < RTOL
    assert np.abs(got.heatmap - heatmap).max() < HEATMAP_ATOL


def test_layer_tensors_and_module_names(nets):
    model = ox.classifier(nets["resnet18"][1])
    tensors = ox.layer_tensors(model)
    last = [t for t in tensors if t.module.startswith("layer4")][-1]
    assert last.shape[1:] == (512, 1, 1) and last.op == "Relu"
    assert ox.classifier(nets["resnet18"][1]) is model  # one Classifier per file version: sessions are reused


def test_bad_models_and_inputs_get_clear_errors(nets, tmp_path):
    good = handmade("NCHW")
    two_inputs = handmade("NCHW")
    two_inputs.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    with pytest.raises(ValueError, match="one image input"):
        ox.classifier(two_inputs)
    integer = handmade("NCHW")
    integer.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    with pytest.raises(ValueError, match="float32 image input"):
        ox.classifier(integer)
    square = handmade("NCHW", size=3)
    with pytest.raises(ValueError, match="NCHW or NHWC"):
        ox.classifier(square)
    assert ox.classifier(square, layout="NCHW").layout == "NCHW"
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid ONNX file"):
        ox.classifier(corrupt)
    with pytest.raises(ValueError, match="window"):
        ox.occlusion(good, images(1, 16), window=32, stride=4)
    with pytest.raises(ValueError, match="baseline"):
        ox.occlusion(good, images(1, 16), window=4, stride=4, baseline="noise")
    with pytest.raises(ValueError, match="score"):
        ox.occlusion(good, images(1, 16), window=4, stride=4, score="probability")
    with pytest.raises(ValueError, match=r"shape \[1, 3, 32, 32\]"):
        ox.occlusion(good, images(1, 32), window=4, stride=4)
    nan = images(1, 16)
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ox.rise(good, nan, n_masks=4)
    with pytest.raises(ValueError, match="out of range"):
        ox.occlusion(good, images(1, 16), window=4, stride=4, targets=[5])
    with pytest.raises(ValueError, match="no tensor or module named 'layer9'.*close"):
        ox.scorecam(nets["resnet18"][1], images(1), "layer9")


def test_command_line_on_an_nhwc_model(tmp_path, capsys):
    from onnx_explain.cli import main
    from onnx_explain.render.drawing import save_png, to_rgb8

    onnx.save(handmade("NHWC"), tmp_path / "nhwc.onnx")
    save_png(tmp_path / "a.png", to_rgb8(images(1, 20)[0]))
    model = str(tmp_path / "nhwc.onnx")
    assert main(["layers", model]) == 0
    assert "act" in capsys.readouterr().out
    for command in (["occlusion", "--window", "4", "--stride", "2"], ["rise", "--n-masks", "16"],
                    ["scorecam", "--layer", "act", "--layer-layout", "NCHW"]):
        assert main([command[0], model, str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *command[1:]]) == 0
        assert (tmp_path / "out" / f"a.{command[0]}.png").is_file()
    assert main(["eigencam", model, str(tmp_path / "a.png"), "--layer", "nope"]) == 2
    assert "no tensor or module named 'nope'" in capsys.readouterr().err


def test_occlusion_with_torch_unimportable(tmp_path):
    import subprocess
    import sys
    import textwrap

    onnx.save(handmade("NHWC"), tmp_path / "nhwc.onnx")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import onnx_explain as ox
        x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
        path = {str(tmp_path / "nhwc.onnx")!r}
        assert ox.occlusion(path, x, window=4, stride=4)["occlusion"].heatmap.shape == (2, 16, 16)
        assert ox.eigencam(path, x, "act", layer_layout="NCHW")["eigencam"].raw.shape == (2, 16, 16)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
