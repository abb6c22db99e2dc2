"""CAMs without gradients on any ONNX classifier (pytorch-grad-cam's definitions): a chosen inner tensor
is exposed as an extra output, and the channel weights come from it alone (Eigen-CAM), from runs of
the model on the input masked by each channel (Score-CAM), or from runs with each channel ablated
(Ablation-CAM).  The runs are chunked Loops in one graph; Eigen-CAM's SVD runs in numpy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_explain.core.graph import Builder, needed_inputs, value
from onnx_explain.core.result import Explanation, Map, rescaled_cams
from onnx_explain.perturbation.batching import balanced_chunk, budget, chunk_loop, clipped_range, leading_rows
from onnx_explain.perturbation.classifier import LAYOUTS, Classifier, classifier, resolve_layer, tensor_shape
from onnx_explain.perturbation.dispatch import explain
from onnx_explain.perturbation.methods import REQUIRED, Option, Outcome, Settings, method
from onnx_explain.perturbation.scoring import (
    check_score,
    image_inputs,
    image_scores,
    model_proto,
    perturbed_scores,
    resolve_targets,
    run_built,
    score_outputs,
    target_scores,
)

CAM_KINDS = ("activations", "scorecam", "ablationcam")
ABLATION_OFFSET = 1e7  # pytorch-grad-cam's: a layer whose minimum is not 0 is ablated to its minimum minus this


def _layout(text: str) -> str:
    if text not in LAYOUTS:
        raise ValueError(f"layer_layout must be one of {LAYOUTS}, got {text!r}")
    return text


LAYER_OPTIONS = (Option("layer", str, REQUIRED, "a tensor name or torch module name (see `onnx-explain layers MODEL`)"),
                 Option("layer_layout", _layout, None, "the layer tensor's layout, NCHW or NHWC "
                                                       "(default: the image input's)"))


@method("eigencam", summary="Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component",
        options=LAYER_OPTIONS, class_specific=False)
def run_eigencam(model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings, *,
                 layer: str, layer_layout: str | None) -> Outcome:
    """The activations [h*w, K] centred and projected on their first principal direction, by numpy's SVD
    as pytorch-grad-cam's EigenCAM (same sign).  Class-agnostic: the predicted class is reported."""
    layer, layout = _layer(model, layer, layer_layout)
    graph = dict(layer=layer, layer_layout=layout, kind="activations", score="logit", batch_size=None)
    predicted = np.full(len(images), -1, np.int64)
    out = run_built(cam_graph, model, graph, {"images": images, "targets": predicted}, settings.providers)
    raw = _first_component(out["activations"])
    found = Map("eigencam", layer, rescaled_cams(raw, model.size), raw)
    return Outcome(out["logits"], out["explained_targets"], found)


@method("scorecam", summary="Score-CAM (Wang et al. 2020): channels weighted by the scores of the input they mask",
        options=LAYER_OPTIONS)
def run_scorecam(model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings, *,
                 layer: str, layer_layout: str | None) -> Outcome:
    """Each activation channel, upsampled (bilinear, corners aligned) and scaled to [0, 1], masks the
    input; the softmax over channels of the target logits of those runs weights the channels.  K model
    runs per image for a layer of K channels, batch_size at a time; raw [N, h, w] = ReLU(sum_k w_k A_k)."""
    return _weighted("scorecam", model, images, targets, settings, layer, layer_layout)


@method("ablationcam", summary="Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the score drop when "
                               "each is ablated", options=LAYER_OPTIONS)
def run_ablationcam(model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings, *,
                    layer: str, layer_layout: str | None) -> Outcome:
    """Channel k's weight is the relative drop of the target logit when channel k is ablated (set to 0,
    or to the layer's minimum minus 1e7 when that minimum is not 0, as pytorch-grad-cam does).  Only the
    part of the model after the layer runs per channel when it reads nothing else from before."""
    return _weighted("ablationcam", model, images, targets, settings, layer, layer_layout)


def _weighted(kind: str, model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings,
              layer: str, layer_layout: str | None) -> Outcome:
    layer, layout = _layer(model, layer, layer_layout)
    graph = dict(layer=layer, layer_layout=layout, kind=kind, score="logit", batch_size=settings.batch_size)
    out = run_built(cam_graph, model, graph, {"images": images, "targets": targets}, settings.providers)
    found = Map(kind, layer, rescaled_cams(out["raw"], model.size), out["raw"])
    return Outcome(out["logits"], out["explained_targets"], found)


def _layer(model: Classifier, layer: str, layer_layout: str | None) -> tuple[str, str]:
    """The layer's tensor and layout; a CAM weighs the channels of a feature map, so it must have rank 4."""
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a tensor or module name (a string), got {layer!r}")
    name, layout = resolve_layer(model, layer), _layout(layer_layout or model.layout)
    shape = tensor_shape(model, name)
    if shape is not None and len(shape) != 4:
        expected = "[N, C, h, w]" if layout == "NCHW" else "[N, h, w, C]"
        raise ValueError(f"layer {layer!r} is the tensor {name!r} of shape {list(shape)}; a CAM needs a feature map "
                         f"{expected} (onnx_explain.layer_tensors lists the model's)")
    return name, layout


def eigencam(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray, layer: str, *,
             layer_layout: str | None = None, providers=None) -> Explanation:
    """Eigen-CAM of any ONNX classifier at one inner tensor: explain(model, images, "eigencam", ...).

    Args:
        model: a path, an onnx.ModelProto or onnx_explain.classifier(...).
        images: float32 [N, C, H, W] or [N, H, W, C], as the model takes them.
        layer: a tensor name (onnx_explain.layer_tensors lists them) or, for files written by
            torch.onnx.export, the torch module whose output it is ("layer4").
        layer_layout: "NCHW" or "NHWC" for the layer's tensor; None: the image input's layout.

    Returns:
        Explanation whose ["eigencam"] map has raw [N, h, w], the projection, and heatmap, its positive
        part scaled, resized to the input (cv2 bilinear) and scaled again, as pytorch-grad-cam does.
    """
    return explain(model, images, "eigencam", providers=providers, layer=layer, layer_layout=layer_layout)


def scorecam(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray, layer: str, *,
             targets: Sequence[int] | np.ndarray | int | None = None, layer_layout: str | None = None,
             batch_size: int | None = None, providers=None) -> Explanation:
    """Score-CAM of any ONNX classifier: explain(model, images, "scorecam", ...).  Arguments as
    eigencam, and targets, batch_size, providers as onnx_explain.explain; raw [N, h, w] = ReLU(sum_k w_k A_k)."""
    return explain(model, images, "scorecam", targets, batch_size=batch_size, providers=providers, layer=layer,
                   layer_layout=layer_layout)


def ablationcam(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray, layer: str, *,
                targets: Sequence[int] | np.ndarray | int | None = None, layer_layout: str | None = None,
                batch_size: int | None = None, providers=None) -> Explanation:
    """Ablation-CAM of any ONNX classifier: explain(model, images, "ablationcam", ...).  Arguments as
    scorecam."""
    return explain(model, images, "ablationcam", targets, batch_size=batch_size, providers=providers, layer=layer,
                   layer_layout=layer_layout)


def cam_graph(model: str | Path | onnx.ModelProto | Classifier, *, layer: str, kind: str, layer_layout: str = "NCHW",
              score: str = "logit", batch_size: int | None = None) -> onnx.ModelProto:
    """The graph behind the activation CAMs, to save and serve: inputs images and targets; outputs
    scores, explained_targets, and "activations" [N, K, h, w] (kind="activations", for Eigen-CAM) or
    the CAM "raw" [N, h, w] (kind "scorecam" or "ablationcam")."""
    model = classifier(model)
    check_score(score)
    if kind not in CAM_KINDS:
        raise ValueError(f"kind must be one of {CAM_KINDS}, got {kind!r}")
    layer, layer_layout = _layer(model, layer, layer_layout)
    b = Builder()
    logits, base, (activations,) = image_scores(b, model, score, extra=[layer])
    if layer_layout == "NHWC":
        activations = b.op("Transpose", activations, perm=[0, 3, 1, 2])
    explained = resolve_targets(b, base, "targets")
    outputs = score_outputs(b, model, logits, base, explained)
    if kind == "activations":
        outputs.append(value(b.named(activations, "activations"), onnx.TensorProto.FLOAT, ["N", "K", "h", "w"]))
    else:
        weigh = {"scorecam": _score_weights, "ablationcam": _ablation_weights}[kind]
        weights = weigh(b, model, layer, layer_layout, activations, base, explained, score,
                        budget(model, batch_size))  # [N, K]
        cam = b.op("ReduceSum", b.op("Mul", b.op("Unsqueeze", weights, b.ints(2, 3)), activations), b.ints(1),
                   keepdims=0)
        outputs.append(value(b.named(b.op("Relu", cam), "raw"), onnx.TensorProto.FLOAT, ["N", "h", "w"]))
    return model_proto(b, model, image_inputs(model), outputs, kind)


def _channel_loop(b: Builder, activations: str, budget: int, run_chunk) -> str:
    """[N, K]: run_chunk(builder, channel indices [chunk]) -> [chunk, N] over all K channels."""
    shape = b.op("Shape", activations)
    n, channels = (b.op("Slice", shape, b.ints(i), b.ints(i + 1)) for i in (0, 1))
    count = b.op("Squeeze", channels, b.ints(0))
    trips, chunk = balanced_chunk(b, count, b.op("Squeeze", n, b.ints(0)), budget)

    def body(bb: Builder, i: str, _: list[str]) -> tuple[list[str], list[str]]:
        ks, _valid = clipped_range(bb, i, chunk, count)
        return [], [run_chunk(bb, ks, n)]

    stacked, = chunk_loop(b, trips, body, [], [onnx.TensorProto.FLOAT])
    return b.op("Transpose", leading_rows(b, stacked, channels), perm=[1, 0])


def _score_weights(b, model, layer, layer_layout, activations, base, explained, score, budget) -> str:
    height, width = model.size

    def run_chunk(bb: Builder, ks: str, n: str) -> str:
        picked = bb.op("Gather", activations, ks, axis=1)  # [N, chunk, h, w]
        sizes = bb.op("Concat", bb.op("Slice", bb.op("Shape", picked), bb.ints(0), bb.ints(2)),
                      bb.ints(height, width), axis=0)
        up = bb.op("Resize", picked, "", "", sizes, mode="linear", coordinate_transformation_mode="align_corners")
        low = bb.op("Sub", up, bb.op("ReduceMin", up, bb.ints(2, 3), keepdims=1))
        spread = bb.op("Add", bb.op("ReduceMax", low, bb.ints(2, 3), keepdims=1), bb.const(1e-8))
        masks = bb.op("Transpose", bb.op("Div", low, spread), perm=[1, 0, 2, 3])  # [chunk, N, H, W]
        masked = bb.op("Mul", bb.op("Unsqueeze", "images", bb.ints(0)),
                       bb.op("Unsqueeze", masks, bb.ints(model.channel_axis + 1)))
        return perturbed_scores(bb, model, masked, n, explained, score)

    return b.op("Softmax", _channel_loop(b, activations, budget, run_chunk), axis=1)


def _ablation_weights(b, model, layer, layer_layout, activations, base, explained, score, budget) -> str:
    low = b.op("ReduceMin", activations, b.ints(1, 2, 3), keepdims=0)
    ablated_to = b.op("Where", b.op("Equal", low, b.const(0.0)), b.const(0.0),
                      b.op("Sub", low, b.const(ABLATION_OFFSET)))
    ablated_to = b.op("Unsqueeze", ablated_to, b.ints(0, 2, 3, 4))  # [1, N, 1, 1, 1]
    channels = b.op("Range", b.const(0, "int64"),
                    b.op("Squeeze", b.op("Slice", b.op("Shape", activations), b.ints(1), b.ints(2)), b.ints(0)),
                    b.const(1, "int64"))
    wanted = model.probabilities if score == "prob" and model.probabilities else model.scores
    needs_images = model.image in needed_inputs(model.model.graph, [wanted], [layer])

    def run_chunk(bb: Builder, ks: str, n: str) -> str:
        hit = bb.op("Cast", bb.op("Equal", bb.op("Unsqueeze", ks, bb.ints(1)), channels), to=onnx.TensorProto.FLOAT)
        hit = bb.op("Unsqueeze", hit, bb.ints(1, 3, 4))  # [chunk, 1, K, 1, 1]
        kept = bb.op("Mul", bb.op("Unsqueeze", activations, bb.ints(0)), bb.op("Sub", bb.const(1.0), hit))
        ablated = bb.op("Add", kept, bb.op("Mul", hit, ablated_to))  # [chunk, N, K, h, w]
        if layer_layout == "NHWC":
            ablated = bb.op("Transpose", ablated, perm=[0, 1, 3, 4, 2])
        bindings = {layer: ablated}
        if needs_images:
            shape = bb.op("Concat", bb.op("Shape", ks), bb.op("Shape", "images"), axis=0)
            bindings[model.image] = bb.op("Expand", bb.op("Unsqueeze", "images", bb.ints(0)), shape)
        return perturbed_scores(bb, model, bindings, n, explained, score)

    dropped = _channel_loop(b, activations, budget, run_chunk)  # [N, K]
    original = b.op("Unsqueeze", target_scores(b, base, explained), b.ints(1))
    return b.op("Div", b.op("Sub", original, dropped), original)


def _first_component(activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection: [N, K, h, w] -> [N, h, w]."""
    projections = []
    for a in np.nan_to_num(activations, nan=0.0):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        projections.append((flat @ vt[0, :]).reshape(a.shape[1:]))
    return np.float32(projections)
