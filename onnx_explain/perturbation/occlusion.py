"""Occlusion sensitivity (Zeiler & Fergus 2014) as one ONNX graph around any classifier: the occluded
batch is made in the graph, run through the model a chunk of windows at a time, and the score drops
are spread back over the pixels.  The incremental plan runs the convolutional layers on the patches a
window changes only (incremental.py); "auto" picks it when it saves more than a fifth of the FLOPs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_explain.core.graph import Builder, value
from onnx_explain.core.result import Explanation, Map
from onnx_explain.perturbation.batching import balanced_chunk, budget, chunk_loop, clipped_range, leading_rows
from onnx_explain.perturbation.blocks import Plan, plan
from onnx_explain.perturbation.classifier import Classifier, classifier
from onnx_explain.perturbation.dispatch import explain
from onnx_explain.perturbation.incremental import FILL, block_scores, clean_reads, padded_sources
from onnx_explain.perturbation.methods import REQUIRED, Option, Outcome, Settings, method
from onnx_explain.perturbation.patches import window_starts
from onnx_explain.perturbation.scoring import (
    check_score,
    image_inputs,
    image_scores,
    min_max,
    model_proto,
    perturbed_scores,
    pixel_masks,
    resolve_targets,
    run_built,
    score_outputs,
    score_tensor,
    target_scores,
)

BASELINES = ("mean", "blur")
PLANS = ("auto", True, False)
FLOAT32_MAX = float(np.finfo(np.float32).max)
# "auto" runs the incremental plan below this FLOP ratio: its read-ins and the tensors it writes back
# move data that the FLOPs leave out, and near a ratio of 1 they cost more than the FLOPs saved
# (docs/performance.md#occlusion).
AUTO_RATIO = 0.8


def _size(text: str) -> int:
    return int(text)


def _baseline_value(text: str) -> float | str:
    return text if text in BASELINES else float(text)


def _plan_value(text: str) -> bool | str:
    choices = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in choices:
        raise ValueError(f"expected auto, true or false, got {text!r}")
    return choices[text.lower()]


@method("occlusion", summary="occlusion sensitivity (Zeiler & Fergus 2014): the score drop when a window is covered",
        options=(Option("window", _size, REQUIRED, "window side in pixels, one int or (height, width)"),
                 Option("stride", _size, REQUIRED, "stride in pixels, one int or (height, width)"),
                 Option("baseline", _baseline_value, 0.0, "what covers a window: a number, 'mean' (each image's "
                                                          "mean colour) or 'blur' (a Gaussian blur) (default 0)"),
                 Option("incremental", _plan_value, "auto", "auto, true or false: whether the convolutional layers "
                                                            "run on the changed patches only (auto: where that "
                                                            "saves more than a fifth of the FLOPs)")))
def run_occlusion(model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings, *,
                  window: int | Sequence[int], stride: int | Sequence[int], baseline: float | str,
                  incremental: bool | str) -> Outcome:
    """Every window position (all channels at once) is replaced by the baseline and the drop in the
    target's score is recorded, as captum's `Occlusion` does.  Map: raw [N, H, W] the mean score drop
    over the windows covering each pixel (0 where no window does), grid [N, nh, nw] the drop per window
    position, heatmap the positive part of raw scaled to [0, 1]; plan and flop_ratio say which plan ran."""
    window, stride, fill = _pair(window, "window"), _pair(stride, "stride"), _fill(baseline)
    chosen, found = occlusion_plan(model, window=window, stride=stride, score=settings.score, incremental=incremental)
    graph = dict(window=window, stride=stride, baseline=fill, score=settings.score, batch_size=settings.batch_size,
                 incremental=chosen)
    out = run_built(occlusion_graph, model, graph, {"images": images, "targets": targets}, settings.providers)
    plan = "incremental" if chosen else "full"
    found = Map("occlusion", None, out["heatmap"], out["raw"], grid=out["grid"], plan=plan,
                flop_ratio=found.flop_ratio)
    return Outcome(out["logits"], out["explained_targets"], found)


def occlusion_plan(model: str | Path | onnx.ModelProto | Classifier, *, window: int | Sequence[int],
                   stride: int | Sequence[int], score: str = "prob", incremental: bool | str = "auto"
                   ) -> tuple[bool, Plan]:
    """(whether the incremental plan runs, the plan): `incremental` "auto" takes it when it needs under
    AUTO_RATIO of the FLOPs of running the whole model on every occluded image."""
    if not (isinstance(incremental, (bool, np.bool_)) or (isinstance(incremental, str) and incremental == "auto")):
        raise ValueError(f"incremental must be one of {PLANS}, got {incremental!r}")
    model = classifier(model)
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if window[0] > model.size[0] or window[1] > model.size[1]:
        raise ValueError(f"window {list(window)} is larger than the image {list(model.size)}")
    found = plan(model, (score_tensor(model, check_score(score)),), window, stride)
    chosen = found.patched and found.flop_ratio < AUTO_RATIO if incremental == "auto" else bool(incremental)
    return chosen, found


def occlusion(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray, *,
              window: int | Sequence[int], stride: int | Sequence[int], baseline: float | str = 0.0,
              incremental: bool | str = "auto", targets: Sequence[int] | np.ndarray | int | None = None,
              score: str = "prob", batch_size: int | None = None, providers=None) -> Explanation:
    """Occlusion sensitivity of any ONNX classifier: explain(model, images, "occlusion", ...).

    Every window position (all channels at once) is replaced by the baseline and the drop in the
    target's score is recorded, as captum's `Occlusion` does.

    Args:
        model: a path, an onnx.ModelProto, or onnx_explain.classifier(...) (which also caches the session).
        images: float32 [N, C, H, W] or [N, H, W, C], as the model takes them.
        window, stride: in pixels, one int or (height, width).
        baseline: a constant, "mean" (each image's mean colour) or "blur" (a Gaussian blur of the
            image, sigma half the smaller window side).
        incremental: True runs the model's convolutional layers on the patches each window changes
            only, and the rest of the model (from global pooling, Flatten, Gemm or any op without a
            patch rule) on full tensors; the map is the same.  False runs the whole model on every
            occluded image.  "auto" takes the incremental plan where it saves more than a fifth of
            the FLOPs.
        targets, score, batch_size, providers: as for onnx_explain.explain.

    Returns:
        Explanation whose ["occlusion"] map has raw [N, H, W], the mean score drop over the windows
        covering each pixel (0 where no window does), grid [N, nh, nw], the drop per window position,
        heatmap, the positive part of raw scaled to [0, 1], plan ("incremental" or "full") and
        flop_ratio (incremental FLOPs / full FLOPs, over all windows).
    """
    return explain(model, images, "occlusion", targets, score=score, batch_size=batch_size, providers=providers,
                   window=window, stride=stride, baseline=baseline, incremental=incremental)


def occlusion_graph(model: str | Path | onnx.ModelProto | Classifier, *, window: int | Sequence[int],
                    stride: int | Sequence[int], baseline: float | str = 0.0, score: str = "prob",
                    batch_size: int | None = None, incremental: bool | str = "auto") -> onnx.ModelProto:
    """The graph `occlusion` runs, to save and serve: inputs images and targets (int64 [N], -1 for the
    predicted class); outputs scores, targets, grid, raw and heatmap.  `incremental` as for occlusion:
    the plan is fixed in the graph."""
    model = classifier(model)
    check_score(score)
    (height, width) = model.size
    chosen, patched = occlusion_plan(model, window=window, stride=stride, score=score, incremental=incremental)
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    rows, cols = _spans(height, wh, sh), _spans(width, ww, sw)

    b = Builder()
    images, targets = "images", "targets"
    reads = clean_reads(patched.regions) if chosen else []
    logits, base, clean = image_scores(b, model, score, reads)
    explained = resolve_targets(b, base, targets)
    fill = _baseline(b, model, images, baseline, min(wh, ww))
    n = b.op("Gather", b.op("Shape", images), b.ints(0), axis=0)
    images_per_run = budget(model, batch_size)  # bounds memory: a chunk of patches takes no more than these images
    if chosen:
        full_fill = b.op("Expand", fill, b.op("Shape", images))
        clean_tensors = {model.image: images, FILL: full_fill, **dict(zip(reads, clean, strict=True))}
        sources = padded_sources(b, patched.regions, clean_tensors)
        occluded = block_scores(b, model, patched, sources, n, explained, score, images_per_run)
    else:
        occluded = _full_scores(b, model, rows, cols, images, fill, n, explained, score, images_per_run)
    drop = b.op("Sub", b.op("Unsqueeze", target_scores(b, base, explained), b.ints(1)),
                b.op("Transpose", occluded, perm=[1, 0]))
    grid = b.op("Reshape", drop, b.ints(-1, len(rows), len(cols)))
    total = b.op("MatMul", b.op("MatMul", b.const(rows.T), grid), b.const(cols))
    covering = np.outer(rows.sum(0), cols.sum(0))
    raw = b.op("Mul", total, b.const(np.divide(1.0, covering, out=np.zeros_like(covering), where=covering > 0)))
    heatmap = min_max(b, b.op("Relu", raw))
    float_, size = onnx.TensorProto.FLOAT, ["N", height, width]
    outputs = [*score_outputs(b, model, logits, base, explained),
               value(b.named(grid, "grid"), float_, ["N", len(rows), len(cols)]),
               value(b.named(raw, "raw"), float_, size), value(b.named(heatmap, "heatmap"), float_, size)]
    return model_proto(b, model, image_inputs(model), outputs, "occlusion")


def _full_scores(b: Builder, model: Classifier, rows: np.ndarray, cols: np.ndarray, images: str, fill: str, n: str,
                 explained: str, score: str, per_chunk: int) -> str:
    """[windows, N]: the whole model on every occluded image."""
    # window w covers rows[w // nw] x cols[w % nw]; each row of these is one window's indicator
    row_of = b.const(np.repeat(rows, len(cols), axis=0))
    col_of = b.const(np.tile(cols, (len(rows), 1)))
    count = len(rows) * len(cols)
    trips, chunk = balanced_chunk(b, b.const(count, "int64"), b.op("Squeeze", n, b.ints(0)), per_chunk)

    def body(bb: Builder, i: str, _: list[str]) -> tuple[list[str], list[str]]:
        windows, _valid = clipped_range(bb, i, chunk, bb.const(count, "int64"))
        inside = bb.op("Mul", bb.op("Unsqueeze", bb.op("Gather", row_of, windows), bb.ints(2)),
                       bb.op("Unsqueeze", bb.op("Gather", col_of, windows), bb.ints(1)))  # [chunk, H, W]
        inside = pixel_masks(bb, model, inside)
        shown = bb.op("Unsqueeze", images, bb.ints(0))
        occluded = bb.op("Add", shown, bb.op("Mul", inside, bb.op("Sub", bb.op("Unsqueeze", fill, bb.ints(0)), shown)))
        return [], [perturbed_scores(bb, model, occluded, n, explained, score)]  # [chunk, N]

    scores, = chunk_loop(b, trips, body, [], [onnx.TensorProto.FLOAT])
    return leading_rows(b, scores, b.ints(count))


def _fill(baseline: object) -> float | str:
    """The baseline as a hashable value: a number (a 0-d array is taken as its number) or a name."""
    if isinstance(baseline, np.ndarray) and baseline.ndim == 0 and baseline.dtype.kind in "iuf":
        baseline = baseline.item()
    if isinstance(baseline, str) or (isinstance(baseline, (int, float, np.integer, np.floating))
                                     and not isinstance(baseline, (bool, np.bool_))):
        return baseline
    raise ValueError(f"baseline must be a number or one of {BASELINES}, got {baseline!r}")


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    def whole(x: object) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and 0 < x <= 2**31

    if isinstance(v, np.ndarray) and v.ndim <= 1:
        v = v.tolist()
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else ()
    if len(pair) != 2 or not all(whole(x) for x in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {v!r}")
    return int(pair[0]), int(pair[1])


def _spans(size: int, window: int, stride: int) -> np.ndarray:
    """[positions, size] indicator of each window position along one axis (captum's positions)."""
    starts = window_starts(size, window, stride)
    spans = np.zeros((len(starts), size), np.float32)
    for k, s in enumerate(starts):
        spans[k, s:s + window] = 1
    return spans


def _baseline(b: Builder, model: Classifier, images: str, baseline: float | str, window: int) -> str:
    """What occluded pixels become: a constant, each image's mean colour, or a blurred copy."""
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, (bool, np.bool_)):
        if not abs(baseline) <= FLOAT32_MAX:  # NaN fails this too
            raise ValueError(f"baseline must be a finite number within float32's range, got {baseline!r}")
        return b.const(np.full([1] * 4, baseline))
    spatial = b.ints(2, 3) if model.layout == "NCHW" else b.ints(1, 2)
    if baseline == "mean":
        return b.op("ReduceMean", images, spatial, keepdims=1)
    if baseline == "blur":
        return _blurred(b, model, images, sigma=window / 2)
    raise ValueError(f"baseline must be a number or one of {BASELINES}, got {baseline!r}")


def _blurred(b: Builder, model: Classifier, images: str, sigma: float) -> str:
    """A separable Gaussian blur, reflecting at the borders, in the model's layout."""
    radius = min(math.ceil(2 * sigma), min(model.size) - 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    channels = model.channels
    x = images if model.layout == "NCHW" else b.op("Transpose", images, perm=[0, 3, 1, 2])
    padded = b.op("Pad", x, b.ints(0, 0, radius, radius, 0, 0, radius, radius), mode="reflect")
    weights = b.const(np.broadcast_to(kernel, (channels, 1, *kernel.shape)))
    blurred = b.op("Conv", padded, weights, group=channels)
    return blurred if model.layout == "NCHW" else b.op("Transpose", blurred, perm=[0, 2, 3, 1])
