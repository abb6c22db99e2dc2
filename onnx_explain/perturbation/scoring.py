"""Graph pieces every pure-inference method shares: the class score, the targets, the scaled heatmap;
and running such a graph, one cached ONNX Runtime session per graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain.core.errors import check_finite, first_line
from onnx_explain.core.graph import OPSET, Builder, value
from onnx_explain.core.inputs import check_images, check_targets
from onnx_explain.core.providers import load_session, resolve_providers
from onnx_explain.perturbation.batching import merge_leading, run_model
from onnx_explain.perturbation.classifier import Classifier

SCORES = ("prob", "logit")


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES} (softmax probability or pre-softmax logit), got {score!r}")
    return score


def score_tensor(model: Classifier, score: str) -> str:
    """The model tensor a score is computed from: its probabilities output, else its logits."""
    return model.probabilities if score == "prob" and model.probabilities else model.scores


def class_scores(b: Builder, model: Classifier, bindings: dict[str, str], score: str) -> str:
    """[batch, classes] probabilities or logits of a batch (a final Softmax in the model is looked
    through for logits)."""
    scores, = run_model(b, model, bindings, [score_tensor(model, score)])
    return b.op("Softmax", scores, axis=-1) if score == "prob" and not model.probabilities else scores


def image_scores(b: Builder, model: Classifier, score: str, extra: Sequence[str] = ()) -> tuple[str, str, list[str]]:
    """(logits, scores as `score` chose, the `extra` model tensors) of the unperturbed images, from one
    run of the model."""
    prob = score == "prob" and model.probabilities
    outs = run_model(b, model, {model.image: "images"}, [model.scores, *([prob] if prob else []), *extra])
    logits, rest = outs[0], outs[1:]
    if score == "logit":
        return logits, logits, rest
    return logits, (rest.pop(0) if prob else b.op("Softmax", logits, axis=-1)), rest


def perturbed_scores(b: Builder, model: Classifier, perturbed: str | dict[str, str], n: str, targets: str,
                     score: str) -> str:
    """Target scores [chunk, N] of a chunk of perturbed copies of the images [chunk, N, *image shape]
    (or of the model tensors given as {name: [chunk, N, ...]}, which cut the model there)."""
    bindings = perturbed if isinstance(perturbed, dict) else {model.image: perturbed}
    return chunk_scores(b, model, {k: merge_leading(b, v) for k, v in bindings.items()}, n, targets, score)


def chunk_scores(b: Builder, model: Classifier, bindings: dict[str, str], n: str, targets: str, score: str) -> str:
    """Target scores [chunk, N] of model tensors given as {name: [chunk x N, ...]} (window-major)."""
    scores = class_scores(b, model, bindings, score)
    classes = b.op("Slice", b.op("Shape", scores), b.ints(1), b.ints(2))
    return target_scores(b, b.op("Reshape", scores, b.op("Concat", b.ints(-1), n, classes, axis=0)), targets)


def pixel_masks(b: Builder, model: Classifier, masks: str) -> str:
    """Masks [chunk, H, W] -> [chunk, 1, ...] broadcasting over the images [N, *image shape], any layout."""
    return b.op("Unsqueeze", masks, b.ints(1, model.channel_axis + 1))


def resolve_targets(b: Builder, scores: str, targets: str) -> str:
    """int64 [N]: -1 becomes the class with the highest score."""
    predicted = b.op("ArgMax", scores, axis=1, keepdims=0)
    return b.op("Where", b.op("Less", targets, b.const(0, "int64")), predicted, targets)


def target_scores(b: Builder, scores: str, targets: str) -> str:
    """scores [..., N, classes] at each image's target -> [..., N]."""
    shape = b.op("Shape", scores)
    index = b.op("Expand", b.op("Unsqueeze", targets, b.ints(-1)),
                 b.op("Concat", b.op("Slice", shape, b.ints(0), b.ints(-1)), b.ints(1), axis=0))
    return b.op("Squeeze", b.op("GatherElements", scores, index, axis=-1), b.ints(-1))


def min_max(b: Builder, maps: str) -> str:
    """Min-max scaling of each [H, W] map to [0, 1], with pytorch-grad-cam's 1e-7 guard."""
    axes = b.ints(-2, -1)
    low = b.op("Sub", maps, b.op("ReduceMin", maps, axes, keepdims=1))
    return b.op("Div", low, b.op("Add", b.op("ReduceMax", low, axes, keepdims=1), b.const(1e-7)))


def model_proto(b: Builder, model: Classifier, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    """The built graph as a model, with the user's model's opsets and local functions."""
    opsets = {o.domain: o.version for o in model.model.opset_import}
    opsets[""] = max(opsets.get("", OPSET), opsets.pop("ai.onnx", OPSET), OPSET)
    proto = onnx.helper.make_model(b.graph(name, inputs, outputs),
                                   opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
                                   functions=list(model.model.functions))
    proto.ir_version = max(model.model.ir_version, 8)
    return proto


def score_outputs(b: Builder, model: Classifier, logits: str, scores: str, explained: str) -> list:
    """The outputs every method's graph starts with: "logits" and "scores" [N, classes] (the same
    tensor's values for score="logit") and "explained_targets" [N]."""
    classes = ["N", model.num_classes]
    return [value(b.named(logits, "logits"), onnx.TensorProto.FLOAT, classes),
            value(b.named(scores, "scores"), onnx.TensorProto.FLOAT, classes),
            value(b.named(explained, "explained_targets"), onnx.TensorProto.INT64, ["N"])]


def image_inputs(model: Classifier) -> list:
    """The graph inputs every method takes: images in the model's layout and int64 targets."""
    return [value("images", onnx.TensorProto.FLOAT, ["N", *model.image_shape]),
            value("targets", onnx.TensorProto.INT64, ["N"])]


def check_batch(model: Classifier, images: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    """float32 images [N, *image shape] (the model's layout), finite; targets as explain takes them."""
    images = check_images(images, model.image_shape)
    return images, check_targets(targets, len(images), model.num_classes or 2**62)


@lru_cache(maxsize=4)
def _session(model: Classifier, build: Callable, settings: tuple, providers: tuple[str, ...]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failed run is raised with its message, not also logged on stderr
    graph = build(model, **dict(settings))
    return load_session(graph.SerializeToString(), options, list(providers), f"the {graph.graph.name} graph")


def run_built(build: Callable[..., onnx.ModelProto], model: Classifier, settings: dict,
              feeds: dict[str, np.ndarray], providers) -> dict[str, np.ndarray]:
    """Build the graph `build(model, **settings)` and run it: its outputs by name.  The session is kept
    for the next call with the same classifier object and settings (pass an onnx_explain.classifier(...)
    to reuse it)."""
    frozen = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items())
    session = _session(model, build, frozen, tuple(resolve_providers(providers)))
    try:
        outputs = session.run(None, feeds)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        raise ValueError(f"ONNX Runtime could not run the model: {first_line(e)}") from e
    named = dict(zip((o.name for o in session.get_outputs()), outputs, strict=True))
    check_finite(named, f"the {build.__name__.removesuffix('_graph')} graph's output")
    return named
