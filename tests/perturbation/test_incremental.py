"""Incremental occlusion gives full occlusion's map: on resnet18, vgg16, mobilenet_v2 (depthwise),
densenet121 (concatenation), efficientnet_b0 (squeeze-and-excitation, a multiplicative branch) and an
NHWC graph written with onnx.helper, for several windows and strides, windows at the borders included.

Tolerance, per image: the two plans' raw maps agree within 1e-5 of the full map's largest magnitude.
Where they differ by more, float32 is measured first: the full plan is compared with a float64 run
of the same model, and the plans must agree within twice that error (two float32 computations of
one value can each be that far from it)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from any_models import calibrated, nhwc_cnn, torch_export
from conftest import make_model
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx_explain as ox
from onnx_explain.perturbation.blocks import CLASSES_PER_AXIS, position_classes
from onnx_explain.perturbation.incremental import fewest_trips
from onnx_explain.perturbation.occlusion import AUTO_RATIO
from onnx_explain.perturbation.patches import region, window_starts

SIZE = 64
RTOL = 1e-5
NETS = ("resnet18", "vgg16", "mobilenet_v2", "densenet121", "efficientnet_b0")
GRIDS = [(8, 4), (12, 5), ((10, 6), (7, 9))]  # (12, 5) leaves the last rows and columns uncovered


def _vgg16_small_head() -> torch.nn.Module:
    """vgg16's convolutional layers with one Linear on their 2x2 output: the 4096-wide head (all
    outside the incremental region) would make the file 500 MB."""
    net = make_model("vgg16")
    net.avgpool, net.classifier = torch.nn.Identity(), torch.nn.Linear(512 * 2 * 2, 10)
    return net.eval()


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """name -> (torch module, its classifier); exported on first use."""
    directory, built = tmp_path_factory.mktemp("incremental"), {}

    def get(name: str):
        if name not in built:
            net = calibrated(_vgg16_small_head() if name == "vgg16" else make_model(name), SIZE)
            built[name] = net, ox.classifier(torch_export(net, directory / f"{name}.onnx", SIZE))
        return built[name]

    return get


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    """occlusion's "blur" baseline in float64: a separable Gaussian reflecting at the borders, NCHW."""
    radius = min(int(np.ceil(2 * sigma)), min(x.shape[2:]) - 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    height, width = x.shape[2:]
    rows = sum(t * padded[:, :, k:k + height, :] for k, t in enumerate(taps))
    return sum(t * rows[:, :, :, k:k + width] for k, t in enumerate(taps))


def fill_of(x: np.ndarray, baseline, window) -> np.ndarray:
    """What covers the windows of NCHW images x, in float64."""
    if baseline == "mean":
        return np.broadcast_to(x.astype(np.float64).mean(axis=(2, 3), keepdims=True), x.shape)
    if baseline == "blur":
        return blurred(x, min(pair(window)) / 2)
    return np.full(x.shape, float(baseline))


def occluded(x: np.ndarray, window, stride, baseline=0.0) -> np.ndarray:
    """Every window of NCHW images x covered by the baseline: [windows, N, C, H, W] in float64."""
    (wh, ww), (sh, sw) = pair(window), pair(stride)
    fill = fill_of(x, baseline, window)
    copies = []
    for r in range(0, x.shape[2] - wh + 1, sh):
        for c in range(0, x.shape[3] - ww + 1, sw):
            y = x.astype(np.float64)
            y[:, :, r:r + wh, c:c + ww] = fill[:, :, r:r + wh, c:c + ww]
            copies.append(y)
    return np.stack(copies)


def raw_from_drops(drops: np.ndarray, size: int, window, stride) -> np.ndarray:
    """[windows] score drops of one image -> its raw map: the mean drop over the covering windows."""
    (wh, ww), (sh, sw) = pair(window), pair(stride)
    total, count, k = np.zeros((size, size)), np.zeros((size, size)), 0
    for r in range(0, size - wh + 1, sh):
        for c in range(0, size - ww + 1, sw):
            total[r:r + wh, c:c + ww] += drops[k]
            count[r:r + wh, c:c + ww] += 1
            k += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def check_plans_agree(full, incremental, float64_scores, window, stride, baseline=0.0) -> None:
    """The tolerance above.  float64_scores(batch [M, C, H, W] float64 NCHW) -> [M, classes] float64,
    called only where the plans differ by more than RTOL."""
    for i, x in enumerate(full.images):
        apart = relative(incremental.raw[i], full.raw[i])
        if apart > RTOL:
            target = full.targets[i]
            base = float64_scores(x[None].astype(np.float64))[0, target]
            drops = base - float64_scores(occluded(x[None], window, stride, baseline)[:, 0])[:, target]
            float32_error = relative(full.raw[i], raw_from_drops(drops, x.shape[-1], window, stride))
            assert apart <= 2 * float32_error, (i, apart, float32_error)


class Run:
    """Both plans' maps of NCHW images, with the images and targets the float64 check needs."""

    def __init__(self, model, x: np.ndarray, channels_last: bool = False, **kwargs) -> None:
        given = x.transpose(0, 2, 3, 1).copy() if channels_last else x
        full = ox.occlusion(model, given, score="logit", incremental=False, **kwargs)
        incremental = ox.occlusion(model, given, score="logit", incremental=True, **kwargs)
        assert (full["occlusion"].plan, incremental["occlusion"].plan) == ("full", "incremental")
        assert np.array_equal(full.targets, incremental.targets)
        assert np.allclose(full.logits, incremental.logits, rtol=RTOL, atol=RTOL)
        self.images, self.targets = x, full.targets
        self.raw, self.incremental = full["occlusion"].raw, incremental["occlusion"]


def torch_scores(net: torch.nn.Module):
    def scores(batch: np.ndarray) -> np.ndarray:
        double = net.double()
        try:
            with torch.no_grad():
                return np.concatenate([double(torch.from_numpy(batch[i:i + 64])).numpy()
                                       for i in range(0, len(batch), 64)])
        finally:
            net.float()

    return scores


def onnx_float64_scores(proto: onnx.ModelProto, channels_last: bool):
    """The ONNX model run in float64 by onnx's reference evaluator."""
    double = onnx.ModelProto()
    double.CopyFrom(proto)
    for t in double.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in (*double.graph.input, *double.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    evaluator = ReferenceEvaluator(double)

    def scores(batch: np.ndarray) -> np.ndarray:
        given = batch.transpose(0, 2, 3, 1) if channels_last else batch
        return evaluator.run(None, {proto.graph.input[0].name: given})[0]

    return scores


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_torchvision_nets(nets, name, grid):
    net, model = nets(name)
    window, stride = grid
    run = Run(model, images(2, (3, SIZE, SIZE)), window=window, stride=stride)
    assert 0 < run.incremental.flop_ratio < 1
    check_plans_agree(run, run.incremental, torch_scores(net), window, stride)


@pytest.mark.parametrize("baseline", [0.0, "mean", "blur"])
@pytest.mark.parametrize("grid", [(4, 4), (5, 3), ((6, 3), (2, 5))], ids=str)
def test_nhwc_graph(grid, baseline):
    """Every rule: a constant relaid out for NHWC, Transpose both ways, stride, dilation, groups,
    SAME_UPPER, max and average pooling with padding, batch norm, Add, Concat, x * sigmoid(x)."""
    proto = nhwc_cnn(32)
    model = ox.classifier(proto)
    window, stride = grid
    run = Run(model, images(2, (3, 32, 32)), channels_last=True, window=window, stride=stride, baseline=baseline)
    _, plan = ox.perturbation.occlusion.occlusion_plan(model, window=window, stride=stride)
    for block in plan.blocks:
        assert [s.node.op_type for s in block.region.steps][-6:] == ["Sigmoid", "Mul", "Transpose", "Mul",
                                                                     "Transpose", "Conv"]
    check_plans_agree(run, run.incremental, onnx_float64_scores(proto, channels_last=True), window, stride, baseline)


def test_auto_takes_the_incremental_plan_where_it_saves_over_a_fifth_of_the_flops(nets):
    _, model = nets("resnet18")
    x = images(1, (3, SIZE, SIZE))
    small = ox.occlusion(model, x, window=8, stride=8)["occlusion"]
    assert small.plan == "incremental" and 0 < small.flop_ratio < AUTO_RATIO
    whole = ox.occlusion(model, x, window=SIZE, stride=1)["occlusion"]  # the window changes every pixel
    assert whole.plan == "full" and whole.flop_ratio >= 1
    _, gated = nets("efficientnet_b0")  # its first squeeze-and-excitation ends the region early
    near = ox.occlusion(gated, x, window=8, stride=8)["occlusion"]
    assert near.plan == "full" and AUTO_RATIO <= near.flop_ratio < 1


def test_chunks_and_fixed_batches_do_not_change_the_map(nets, tmp_path):
    net, dynamic = nets("resnet18")
    fixed = ox.classifier(torch_export(net, tmp_path / "fixed.onnx", SIZE, batch=4))
    x = images(3, (3, SIZE, SIZE))
    kwargs = dict(window=16, stride=8, score="logit", incremental=True)
    want = ox.occlusion(dynamic, x, **kwargs)["occlusion"].raw
    for model, batch_size in ((dynamic, 1), (dynamic, 5), (fixed, 8)):
        got = ox.occlusion(model, x, batch_size=batch_size, **kwargs)["occlusion"]
        assert got.plan == "incremental"
        assert max(relative(got.raw[i], want[i]) for i in range(3)) < RTOL, (model.batch, batch_size)


def test_blocks_cover_the_grid_once_and_save_flops(nets):
    """Windows near the borders get blocks with shorter patches, and every window is in one block."""
    _, model = nets("resnet18")
    window, stride = 8, 4
    _, plan = ox.perturbation.occlusion.occlusion_plan(model, window=window, stride=stride)
    positions = len(window_starts(SIZE, window, stride))
    windows = np.concatenate([block.windows(plan.columns) for block in plan.blocks])
    assert sorted(windows.tolist()) == list(range(positions * positions))
    assert len(plan.blocks) == CLASSES_PER_AXIS ** 2
    lengths = {(block.region.steps[-1].out.rows.length, block.region.steps[-1].out.cols.length)
               for block in plan.blocks}
    assert len(lengths) > 1
    starts = tuple(int(v) for v in window_starts(SIZE, window, stride))
    single = region(model, (model.probabilities or model.scores,), (window, window), starts, starts)
    assert plan.flop_ratio < single.incremental_macs / single.full_macs


def test_position_classes_take_the_fewest_multiply_adds():
    lengths = np.array([[1, 2], [9, 9], [1, 2], [4, 5], [9, 9], [4, 6]])
    classes = position_classes(lengths, np.array([1.0, 1.0]))
    assert [c.tolist() for c in classes] == [[0, 2], [3, 5], [1, 4]]
    assert [c.tolist() for c in position_classes(lengths[[0, 2]], np.array([1.0, 1.0]))] == [[0, 1]]  # one signature


def test_trips_hold_at_most_the_windows_that_fit():
    """A trip holds a chunk of every block: the fewest trips whose chunks fit, one window a block at least."""
    counts = [9, 12, 18, 12, 16, 24, 18, 24, 36]
    table = fewest_trips(counts)

    def held(trips: int) -> int:
        return sum(-(-c // trips) for c in counts)

    for fit in range(sum(counts) + 1):
        trips = table[fit]
        assert held(trips) <= max(fit, len(counts))
        assert trips == 1 or held(trips - 1) > max(fit, len(counts))
