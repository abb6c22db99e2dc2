"""export_explainer: a PyTorch classifier in, one ONNX file out that returns logits and maps in one run."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from onnx_explain.core import __version__
from onnx_explain.core.inputs import FLOAT32, check_count, check_flag, check_methods
from onnx_explain.core.metadata import GraphInfo, MapOutputs, write_info
from onnx_explain.core.opset import at_opset_18
from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.exporters.default_inputs import cache_defaults
from onnx_explain.exporters.errors import ExportError, UnsupportedOpError
from onnx_explain.exporters.layers import ALL_CONV, check_names, conv_layers, pooled_classifier, resolve_layers
from onnx_explain.exporters.methods import CLASSIFIER, METHODS, RELEVANCE_FAMILY
from onnx_explain.exporters.sampling import check_integration, check_samples, check_steps
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
        TypeError: model is not a torch.nn.Module.
        ValueError: an argument of the wrong type or value, named with what was given and what is expected,
            before the model is traced: no or unknown methods; a model that is not float32 or cannot run on
            one image of input_shape (three integers >= 1); layer names that are not strings or are
            repeated; a layer method without layers; top_k, ig_steps (at most 4096 with a path method) or
            noise_samples (at most 4096 with a noise method) that is not a positive integer; an unknown
            ig_method or feature_score; class_names that are not strings without control characters, one
            per logit; token_grid that is not two positive integers, or given for layers that output
            feature maps; bad mean, std, baseline, noise_std or lrp_epsilon; cam on a model whose layer is
            not followed by global average pooling and one linear layer; a feature target with a layer
            method, or on a layer without a feature map.
        LayerNotFoundError: a layer name (in layers, also without a layer method, or feature_layer) that is
            not a module (close candidates are listed), or a layer that does not run once per forward pass.
        UnsupportedOpError: an op that cannot be differentiated or exported (named with its module).
        ExportValidationError: ONNX Runtime disagrees with torch.

    Example:
        >>> from onnx_explain.models.shapenet import load_shapenet
        >>> export_explainer(load_shapenet(), "shapenet.onnx", input_shape=(3, 64, 64), layers=["features"])
    """
    # every argument is checked before the model runs, the cheap checks first; the trace comes last
    _check_model(model)
    chosen = _check_methods(methods)
    path = _writable(path)
    input_shape = _check_shape("input_shape", input_shape, 3, "[C, H, W] of one image, three integers >= 1")
    preprocessing = _preprocessing(mean, std, input_shape[0])
    top_k = check_count("top_k", top_k)
    sampling = _sampling(chosen, ig_steps, ig_method, noise_samples)
    class_names = _check_class_names(class_names)
    token_grid = None if token_grid is None else _check_shape(
        "token_grid", token_grid, 2, "(h, w), two integers >= 1 (a token layer's grid of its last h * w tokens)")
    defaults = _defaults(input_shape, counterfactual=counterfactual, baselines=_check_baseline(baseline),
                         noise_std=noise_std, lrp_epsilon=lrp_epsilon)
    check_flag("validate_export", validate_export)
    layer_names = _layer_names(model, chosen, layers)
    _check_feature(chosen, feature_layer, feature_score)
    with frozen(model):
        num_classes = _num_classes(model, input_shape)  # first: it says plainly when the shape does not fit
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} outputs")
        tapped = (resolve_layers(model, layer_names, input_shape, token_grid)
                  if any(m.at == "layer" for m in chosen) else {})
        feature = _feature_target(model, feature_layer, feature_score, input_shape, token_grid)
        _check_token_grid_used(token_grid, {**tapped, **({feature.layer: feature.info} if feature else {})})
        choices = feature.info.shape[0] if feature else num_classes
        if top_k > choices:
            raise ValueError(f"top_k must be between 1 and the number of {'channels' if feature else 'classes'} "
                             f"({choices}), got {top_k}")
        classifier = (pooled_classifier(model, tapped, input_shape)
                      if any(m.layer_rule == CLASSIFIER for m in chosen) else None)
        traced = trace(model, input_shape, chosen, tapped, classifier, top_k, feature, sampling, defaults)
        proto = _to_onnx(traced, defaults["counterfactual"])
    info = GraphInfo(
        input_shape=input_shape, num_classes=num_classes,
        class_names=class_names if class_names is not None else tuple(str(i) for i in range(num_classes)),
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


def _shown(value: object) -> str:
    """A given value for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _is_count(value: object) -> bool:
    """An integer >= 1 (a numpy integer too; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1


def _is_flat(value: object) -> bool:
    """A list, a tuple or a 1-D array (its items are checked by the caller)."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _check_model(model: object) -> None:
    """A float32 torch module (the exported graph and its inputs are float32).

    Raises:
        TypeError: not a torch.nn.Module.
        ValueError: a floating-point parameter or buffer of another dtype.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dtypes = sorted({str(t.dtype) for t in (*model.parameters(), *model.buffers())
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        raise ValueError(f"model must be float32: its parameters or buffers are {', '.join(dtypes)} "
                         "(convert it with model.float())")


def _check_shape(name: str, value: object, size: int, expected: str) -> tuple[int, ...]:
    """`size` integers >= 1, from a list, tuple or 1-D array (numpy integers too; bools and floats refused)."""
    if not _is_flat(value) or len(value) != size or not all(_is_count(v) for v in value):
        raise ValueError(f"{name} must be {expected}, got {_shown(value)}")
    return tuple(int(v) for v in value)


def _preprocessing(mean, std, channels: int) -> dict | None:
    """{"mean": [C], "std": [C]} as the metadata stores them, checked; None when neither is given."""
    given = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    for key, values in given.items():
        numbers = _numbers(values)
        if numbers is None or len(numbers) != channels or not all(math.isfinite(v) for v in numbers) or (
                key == "std" and min(numbers) <= 0):
            positive = " > 0" if key == "std" else ""
            raise ValueError(f"{key} must be {channels} finite numbers{positive}, one per channel; "
                             f"got {_shown(values)}")
        given[key] = numbers
    return given or None


def _numbers(values: object) -> list[float] | None:
    """The values of a list, tuple or 1-D array of real numbers as floats (beyond float: inf); None when
    `values` is anything else (bools and strings are not numbers)."""
    if not _is_flat(values) or not all(isinstance(v, (int, float, np.integer, np.floating))
                                       and not isinstance(v, (bool, np.bool_)) for v in values):
        return None
    try:
        return [float(v) for v in values]
    except OverflowError:  # an int beyond any float
        return [math.inf]


def _check_class_names(names: object) -> tuple[str, ...] | None:
    """A list or tuple of strings without control characters (\\x00-\\x1f, \\x7f); their number is checked
    against the model's logits once it has run."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"class_names must be a list or tuple of strings, one per class, got {_shown(names)}")
    bad = [n for n in names if not isinstance(n, str) or re.search(r"[\x00-\x1f\x7f]", n)]
    if bad:
        raise ValueError(f"class_names must be strings without control characters (\\x00-\\x1f, \\x7f), one per "
                         f"class; got {_shown(bad[0])} ({type(bad[0]).__name__})")
    return tuple(str(n) for n in names)


def _check_baseline(baseline: object) -> object:
    """A number or an array (its shape and values are checked with the other defaults, in _defaults)."""
    if isinstance(baseline, (bool, np.bool_)) or not isinstance(baseline, (int, float, np.number, np.ndarray)):
        raise ValueError(f"baseline must be a number or a float32 array [C, H, W], got {_shown(baseline)}")
    if isinstance(baseline, int) and abs(baseline) > float(FLOAT32.max):  # int vs float: exact, no overflow
        raise ValueError(f"baseline must be a finite number within float32's range (at most {FLOAT32.max:.3g}), "
                         f"got {_shown(baseline)}")
    return baseline


def _layer_names(model: nn.Module, chosen, layers: object) -> list[str]:
    """The module names `layers` asks for ("all-conv": every convolution), each checked to be a module even
    when no chosen method reads a layer; the layer methods need at least one."""
    if isinstance(layers, str):
        names = conv_layers(model) if layers == ALL_CONV else [layers]
    elif isinstance(layers, Iterable) and not isinstance(layers, (bytes, dict)):
        names = list(layers)
    else:
        raise ValueError(f"layers must be a module name, a list of them or {ALL_CONV!r}, got {_shown(layers)}")
    names = check_names(model, names)
    if any(m.at == "layer" for m in chosen) and not names:
        raise ValueError(f"methods {[m.name for m in chosen if m.at == 'layer']} need layers=[...]: "
                         "name the module(s) whose activations they explain")
    return names


def _check_token_grid_used(token_grid: tuple[int, ...] | None, layers: dict) -> None:
    """token_grid lays out a token layer's output; refused when every layer it could apply to (`layers`,
    {name: LayerInfo} of the tapped layers and the feature layer) outputs a feature map.  Without layers
    (input methods only) it is left unused: the command line passes a transformer's grid whatever the methods."""
    if token_grid is not None and layers and not any(info.tokens for info in layers.values()):
        raise ValueError(f"token_grid {list(token_grid)} applies to layers that output tokens [N, T, C]; "
                         f"{list(layers)} output feature maps [N, C, h, w] (leave token_grid out)")


def _writable(path: object) -> Path:
    """Checked before the export's work: the file can be written where it is asked for."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file name (a str or Path ending in .onnx), got {_shown(path)}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the export to {path}: it is a directory; name a .onnx file")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write the export to {path}: {blocking} is a file, not a folder")
    return path


def _sampling(chosen, steps: object, integration: object, samples: object) -> Sampling:
    """The sampled methods' settings, checked: counts are whole numbers >= 1, capped (sampling.MAX_STEPS,
    MAX_SAMPLES) only where a chosen method uses them; the integration rule is built later, in the trace,
    and only for a path method."""
    check_integration(integration)
    steps, samples = check_count("ig_steps", steps), check_count("noise_samples", samples)
    if any(m.sampler and m.sampler.path for m in chosen):
        check_steps(integration, steps)
    if any(m.sampler and m.sampler.noise for m in chosen):
        check_samples(samples)
    return Sampling(steps, integration, samples)


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


def _check_methods(methods: object):
    """The chosen methods, in order, each once: a method name or a list of them."""
    return [METHODS[m] for m in check_methods(methods, METHODS)]


def _check_feature(chosen, layer: object, score: object) -> None:
    """feature_layer (None or a module name, resolved once the model runs) and feature_score, which is
    checked even without a feature layer."""
    if not isinstance(score, str) or score not in FEATURE_SCORES:
        raise ValueError(f"feature_score must be one of {FEATURE_SCORES}, got {_shown(score)}")
    if layer is None:
        return
    if not isinstance(layer, str):
        raise ValueError(f"feature_layer must be a module name (a string, as in model.named_modules()) or None, "
                         f"got {_shown(layer)}")
    layer_methods = [m.name for m in chosen if m.at == "layer"]
    if layer_methods:
        raise ValueError(f"feature targets explain a channel in input space with input methods; {layer_methods} "
                         "explain a class at a layer (export them without feature_layer)")
    scored = [m.name for m in chosen if m.name in RELEVANCE_FAMILY]
    if scored:
        raise ValueError(f"feature targets work with saliency, guided_backprop, deconvnet and gradient_x_input; "
                         f"{scored} explain a class score (export them without feature_layer)")


def _feature_target(model: nn.Module, layer: str | None, score: str, input_shape: tuple[int, ...],
                    token_grid: tuple[int, ...] | None) -> FeatureTarget | None:
    """The checked feature_layer resolved on the model (it must output a feature map, or tokens)."""
    if layer is None:
        return None
    info = resolve_layers(model, [layer], input_shape, token_grid, needs="feature_layer needs")[layer]
    return FeatureTarget(layer, info, score)


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
    return at_opset_18(cache_defaults(proto))


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
