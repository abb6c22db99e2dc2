"""export_explainer: a PyTorch classifier in, one ONNX file out that returns logits and maps in one run."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from onnx_explain.core import __version__
from onnx_explain.core.metadata import GraphInfo, MapOutputs, write_info
from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.exporters.default_inputs import cache_defaults
from onnx_explain.exporters.errors import ExportError, UnsupportedOpError
from onnx_explain.exporters.layers import ALL_CONV, conv_layers, pooled_classifier, resolve_layers
from onnx_explain.exporters.methods import CLASSIFIER, METHODS, RELEVANCE_FAMILY
from onnx_explain.exporters.sampling import integration_rule
from onnx_explain.exporters.trace import FEATURE_SCORES, FeatureTarget, Sampling, Traced, frozen, targets_shape, trace
from onnx_explain.exporters.translations import TRANSLATIONS, check_index_readers
from onnx_explain.exporters.validate import validate


class _Joint(nn.Module):
    """Holds the traced graph and its parameters, so torch.onnx.export sees an ordinary module."""

    def __init__(self, traced: Traced) -> None:
        super().__init__()
        self.graph = traced.graph
        self.names = list(traced.params)
        for i, t in enumerate(traced.params.values()):
            self.register_buffer(f"p{i}", t.detach().clone())

    def forward(self, images: torch.Tensor, targets: torch.Tensor, counterfactual: torch.Tensor,
                baselines=None, seed=None, noise_std=None, lrp_epsilon=None):  # the EXTRA_INPUTS, by name
        params = {name: getattr(self, f"p{i}") for i, name in enumerate(self.names)}
        given = {"baselines": baselines, "seed": seed, "noise_std": noise_std, "lrp_epsilon": lrp_epsilon}
        return self.graph(params, images, targets, counterfactual, *(v for v in given.values() if v is not None))


def export_explainer(model: nn.Module, path: str | Path, *, input_shape: Sequence[int],
                     layers: Sequence[str] | str = (),
                     methods: Sequence[str] = ("saliency", "guided_backprop", "gradcam"),
                     class_names: Sequence[str] | None = None, counterfactual: bool = False,
                     top_k: int = 1, feature_layer: str | None = None, feature_score: str = "max",
                     ig_steps: int = 32, ig_method: str = "gausslegendre", noise_samples: int = 16,
                     noise_std: float = 0.15, baseline: np.ndarray | float = 0.0, lrp_epsilon: float = 1e-9,
                     token_grid: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, validate_export: bool = True) -> GraphInfo:
    """Write one ONNX file that computes the logits and every requested method's map in a single run.

    Inputs of the file: `images` float32 [N, C, H, W] (N dynamic); `targets` int64 [N] (or [N, k] with
    top_k=k), where -1 explains the predicted class (in column j, the j-th highest); `counterfactual`, a
    bool scalar that may be left out (its default is the `counterfactual` argument).  Outputs: `logits`,
    `explained_targets` (the classes explained), per method `<method>.raw` / `<method>.heatmap` (input
    methods) or `<method>@<layer>.raw` / `.heatmap` (layer methods), `<method>.delta` for the methods
    whose attributions sum to the score (change), and `activation@<layer>` / `gradient@<layer>` at each
    tapped layer.  The relevance and sampled methods add inputs that may be left out too: `baselines`
    float32 [1, C, H, W] (deeplift and the integrated gradients), `seed` int64 and `noise_std` float32
    scalars (the SmoothGrad family), `lrp_epsilon` float32 scalar; their defaults are the arguments below.

    Args:
        model: a classifier returning logits [N, classes]; it is traced in eval mode and left as it was.
        path: where to write the .onnx file.
        input_shape: [C, H, W] of one image.
        layers: module names (as in model.named_modules()) for the layer methods (the CAM family), or
            "all-conv" for the output of every convolution.
        methods: names from onnx_explain.exporters.METHODS.
        class_names: optional, one per logit; stored in the file.
        counterfactual: the default of the file's `counterfactual` input: CAM-family maps of the regions
            that argue against the class (the gradient at the layer with its sign flipped).
        top_k: targets per image, explained in the same run; every map gets a k axis after N.
        feature_layer: makes the targets channels of this layer instead of classes (Zeiler & Fergus):
            the input methods then reconstruct that feature in input space; -1 is the strongest channel.
        feature_score: "max" (the channel's strongest activation) or "sum" (its total activation).
        ig_steps: integration steps of integrated_gradients and the ig_* SmoothGrad variants.
        ig_method: captum's integration rules: "gausslegendre", "riemann_left", "riemann_right",
            "riemann_middle" or "riemann_trapezoid".
        noise_samples: noisy copies per image of the SmoothGrad family.
        noise_std: the default standard deviation of SmoothGrad's Gaussian noise, in input units.
        baseline: the default baseline of deeplift and integrated gradients: a number or an array [C, H, W].
        lrp_epsilon: the default stabiliser of lrp_epsilon (captum's EpsilonRule default is 1e-9).
        token_grid: (h, w) for layers that output tokens [N, T, C] (vision transformers): their last h * w
            tokens, row by row, form the feature map [N, C, h, w]; leading ones (the class token) are dropped.
        mean, std: the model's preprocessing of an RGB image in [0, 1], per channel: x = (image - mean) / std.
            Stored in the file, so servers and the command line prepare encoded images as the model expects.
        validate_export: compare ONNX Runtime (default optimisation level) with torch after export.

    Returns:
        The GraphInfo written into the file's metadata.

    Raises:
        ValueError: unknown method, bad input shape, a layer method without layers, cam on a model
            whose layer is not followed by global average pooling and one linear layer, or a feature
            target with a layer method or an unknown score.
        LayerNotFoundError: a layer name that is not a module (close candidates are listed).
        UnsupportedOpError: an op that cannot be differentiated or exported (named with its module).
        ExportValidationError: ONNX Runtime disagrees with torch.

    Example:
        >>> from onnx_explain.models.shapenet import load_shapenet
        >>> export_explainer(load_shapenet(), "shapenet.onnx", input_shape=(3, 64, 64), layers=["features"])
    """
    chosen = _check_methods(methods)
    path = _writable(Path(path))
    preprocessing = _preprocessing(mean, std, input_shape)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be [C, H, W] of one image, got {list(input_shape)}")
    layer_names = conv_layers(model) if layers == ALL_CONV else [layers] if isinstance(layers, str) else list(layers)
    if any(m.at == "layer" for m in chosen) and not layer_names:
        raise ValueError(f"methods {[m.name for m in chosen if m.at == 'layer']} need layers=[...]: "
                         "name the module(s) whose activations they explain")
    with frozen(model):
        num_classes = _num_classes(model, input_shape)  # first: it says plainly when the shape does not fit
        tapped = (resolve_layers(model, layer_names, input_shape, token_grid)
                  if any(m.at == "layer" for m in chosen) else {})
        feature = _feature_target(model, chosen, feature_layer, feature_score, input_shape, token_grid)
        choices = feature.info.shape[0] if feature else num_classes
        if not 1 <= top_k <= choices:
            raise ValueError(f"top_k must be between 1 and the number of {'channels' if feature else 'classes'} "
                             f"({choices}), got {top_k}")
        classifier = (pooled_classifier(model, tapped, input_shape)
                      if any(m.layer_rule == CLASSIFIER for m in chosen) else None)
        sampling = _sampling(ig_steps, ig_method, noise_samples)
        defaults = _defaults(input_shape, counterfactual=counterfactual, baselines=baseline, noise_std=noise_std,
                             lrp_epsilon=lrp_epsilon)
        traced = trace(model, input_shape, chosen, tapped, classifier, top_k, feature, sampling, defaults)
        proto = _to_onnx(traced, defaults["counterfactual"])
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} outputs")
    info = GraphInfo(
        input_shape=input_shape, num_classes=num_classes,
        class_names=tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes)),
        maps=tuple(_map_outputs(chosen, tapped)), layers={k: v.shape for k, v in tapped.items()},
        producer=f"onnx-explain {__version__}", opset=_opset(proto), top_k=top_k,
        sampling=_sampling_info(chosen, sampling),
        points=1 + sum(sampling.evaluations(s) for s in {m.sampler for m in chosen if m.sampler}),
        feature={"layer": feature.layer, "score": feature.score, "channels": choices} if feature else None,
        preprocessing=preprocessing)
    write_info(proto, info)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    if validate_export:
        validate(path, traced, {m.name: sampling.evaluations(m.sampler) for m in chosen if m.sampler})
    return info


def _preprocessing(mean, std, input_shape: Sequence[int]) -> dict | None:
    """{"mean": [C], "std": [C]} as the metadata stores them, checked; None when neither is given."""
    channels = int(input_shape[0]) if len(input_shape) else 0
    given = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    for key, values in given.items():
        values = [float(v) for v in values]
        if len(values) != channels or not all(math.isfinite(v) for v in values) or (
                key == "std" and min(values) <= 0):
            positive = " > 0" if key == "std" else ""
            raise ValueError(f"{key} must be {channels} finite numbers{positive}, one per channel; "
                             f"got {list(given[key])}")
        given[key] = values
    return given or None


def _writable(path: Path) -> Path:
    """Checked before the export's work: the file can be written where it is asked for."""
    if path.is_dir():
        raise ValueError(f"cannot write the export to {path}: it is a directory; name a .onnx file")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write the export to {path}: {blocking} is a file, not a folder")
    return path


def _sampling(steps: int, integration: str, samples: int) -> Sampling:
    integration_rule(integration, steps)  # raises on a bad rule or step count
    if samples < 1:
        raise ValueError(f"noise_samples must be at least 1, got {samples}")
    return Sampling(int(steps), integration, int(samples))


def _sampling_info(chosen, sampling: Sampling) -> dict:
    """The export-time settings the file's sampled methods use, for the metadata."""
    info = {}
    if any(m.sampler and m.sampler.path for m in chosen):
        info.update(steps=sampling.steps, integration=sampling.integration)
    if any(m.sampler and m.sampler.noise for m in chosen):
        info.update(samples=sampling.samples)
    return info


def _defaults(input_shape: tuple[int, ...], **given) -> dict[str, torch.Tensor]:
    """The values of the optional graph inputs when a caller leaves them out, checked as explain checks them."""
    return {o.name: torch.from_numpy(o.check(given.get(o.name, o.default), 1, input_shape))
            for o in GRAPH_OPTIONS}


def _check_methods(methods: Sequence[str]):
    names = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown methods {unknown}; available: {sorted(METHODS)}")
    return [METHODS[m] for m in dict.fromkeys(names)]


def _feature_target(model: nn.Module, chosen, layer: str | None, score: str, input_shape: tuple[int, ...],
                    token_grid: Sequence[int] | None) -> FeatureTarget | None:
    if layer is None:
        return None
    if score not in FEATURE_SCORES:
        raise ValueError(f"feature_score must be one of {FEATURE_SCORES}, got {score!r}")
    layer_methods = [m.name for m in chosen if m.at == "layer"]
    if layer_methods:
        raise ValueError(f"feature targets explain a channel in input space with input methods; {layer_methods} "
                         "explain a class at a layer (export them without feature_layer)")
    scored = [m.name for m in chosen if m.name in RELEVANCE_FAMILY]
    if scored:
        raise ValueError(f"feature targets work with saliency, guided_backprop, deconvnet and gradient_x_input; "
                         f"{scored} explain a class score (export them without feature_layer)")
    return FeatureTarget(layer, resolve_layers(model, [layer], input_shape, token_grid)[layer], score)


def _num_classes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # torch's shape errors come as these
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        takes = (f"; its first layer takes {first.in_channels} channels" if isinstance(first, nn.Conv2d) else
                 f"; its first layer takes {first.in_features} features" if first is not None else "")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model cannot run on one image of input_shape {list(input_shape)}{takes} "
                         f"(torch: {reason})") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits [N, classes]; it returned {got}")
    return int(out.shape[1])


def _map_outputs(chosen, tapped) -> list[MapOutputs]:
    maps = []
    for m in chosen:
        for layer in ([None] if m.at == "input" else list(tapped)):
            stem = m.name if layer is None else f"{m.name}@{layer}"
            maps.append(MapOutputs(m.name, layer, f"{stem}.raw", f"{stem}.heatmap",
                                   f"{stem}.delta" if m.delta else None))
    return maps


def _to_onnx(traced: Traced, counterfactual: torch.Tensor) -> onnx.ModelProto:
    check_index_readers(traced.graph.graph)
    joint = _Joint(traced)
    n = torch.export.Dim("N", min=1, max=65536)
    images = torch.randn(2, *traced.input_shape)
    targets = torch.full(targets_shape(2, traced.top_k), -1, dtype=torch.int64)
    flag = torch.tensor(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                # optimize=False: ONNX Runtime optimises at load, and onnxscript's optimiser takes minutes on densenet
                joint, (images, targets, flag), kwargs=dict(traced.extras), dynamo=True, verbose=False,
                optimize=False, input_names=["images", "targets", "counterfactual", *traced.extras],
                output_names=traced.output_names,
                dynamic_shapes={"images": {0: n}, "targets": {0: n}, "counterfactual": {},
                                **{name: {} for name in traced.extras}},
                custom_translation_table=TRANSLATIONS)
    except Exception as e:  # torch.onnx raises several types; all mean the graph cannot be written
        ops = _untranslatable(traced, _chain_text(e))
        if ops:
            raise UnsupportedOpError(f"no ONNX translation for {'; '.join(ops)}") from e
        raise ExportError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0]}") from e
    proto = program.model_proto
    _set_default(proto, "counterfactual", counterfactual.numpy())
    for name, value in traced.extras.items():
        _set_default(proto, name, value.numpy())
    return cache_defaults(proto)


def _set_default(proto: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """An initializer named like a graph input is that input's default in ONNX Runtime: callers may omit it."""
    if any(i.name == name for i in proto.graph.input):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(value, name))


def _chain_text(e: BaseException | None) -> str:
    text = []
    while e is not None:
        text.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(text)


def _untranslatable(traced: Traced, error: str) -> list[str]:
    """The graph's ops that the export error names, each with the module it came from."""
    found = {}
    for node in traced.graph.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        name = target.overloadpacket.__name__
        if re.search(rf"[.:]{re.escape(name)}\b", error):
            where = traced.origins.get(name, "'<model>'")
            found.setdefault(str(target), f"{target} (from module {where})")
    return list(found.values())


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
