"""Tracing the joint forward + backward function of a model into one ATen-level FX graph."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.utils._python_dispatch import TorchDispatchMode

from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.exporters.class_token import on_read_token
from onnx_explain.exporters.decompositions import aten, decomposition_table, linear_everywhere
from onnx_explain.exporters.errors import UnsupportedOpError
from onnx_explain.exporters.layers import LayerInfo
from onnx_explain.exporters.methods import CLASSIFIER, HeadInputs, Method, Sampler
from onnx_explain.exporters.relevance import RULED_OPS, CallSites, check_ops
from onnx_explain.exporters.rewrites import factors_before_pool_routing
from onnx_explain.exporters.rules import relu_rule
from onnx_explain.exporters.sampling import integration_rule, noisy, on_path, weighted_sum

log = logging.getLogger(__name__)


@dataclass
class Traced:
    """The traced graph, the parameters it takes first, and the names of its outputs in order."""

    graph: torch.fx.GraphModule
    params: dict[str, torch.Tensor]
    output_names: list[str]
    input_shape: tuple[int, ...]
    origins: dict[str, str]  # ATen op name -> the module that first called it
    top_k: int = 1  # targets per image
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # optional inputs, in order, with defaults


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with frozen parameters for the duration, restored afterwards even on error."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        model.train(training)
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _taps(model: nn.Module, deltas: dict[str, torch.Tensor], acts: dict[str, torch.Tensor],
          infos: dict[str, LayerInfo]) -> Iterator[None]:
    """Adds deltas[name] (zeros) to each tapped layer's output and records the result as a feature map.

    The gradient with respect to a zero delta is the gradient at the layer's output, and the backward
    pass of a vjp taken only with respect to the deltas stops at the layers.
    """
    modules = dict(model.named_modules())

    def hook(name: str):
        def add(_module, _inputs, output):
            tapped = aten.add.Tensor(output, deltas[name])  # an ATen call: not a residual add for LRP
            acts[name] = infos[name].as_map(tapped)
            return tapped

        return add

    handles = [modules[name].register_forward_hook(hook(name)) for name in deltas]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


FEATURE_SCORES = ("max", "sum")


@dataclass(frozen=True)
class FeatureTarget:
    """Targets that are channels of a layer (Zeiler & Fergus): the score of channel c is the maximum or
    the sum of its activation map."""

    layer: str
    info: LayerInfo
    score: str  # "max" or "sum"


# The optional graph inputs that only some methods read, in the order the graph takes them after
# counterfactual (which every file takes); each has a default, so callers may leave it out.
EXTRA_INPUTS = tuple(o.name for o in GRAPH_OPTIONS if o.name != "counterfactual")


@dataclass(frozen=True)
class Sampling:
    """Export-time settings of the sampled methods: integrated gradients' steps and integration rule
    (captum's names), and SmoothGrad's number of noisy copies."""

    steps: int = 32
    integration: str = "gausslegendre"
    samples: int = 16

    def rule(self) -> tuple[list[float], list[float]]:
        return integration_rule(self.integration, self.steps)

    def evaluations(self, sampler: Sampler) -> int:
        """The input gradients that one image's map averages."""
        return (self.samples if sampler.noise else 1) * (self.steps if sampler.path else 1)


def extra_inputs(methods: Sequence[Method]) -> list[str]:
    """The optional graph inputs the methods read."""
    needs = set()
    for m in methods:
        if m.input_rule == "deeplift" or (m.sampler and m.sampler.path):
            needs.add("baselines")
        if m.sampler and m.sampler.noise:
            needs |= {"seed", "noise_std"}
        if m.input_rule == "lrp":
            needs.add("lrp_epsilon")
    return [name for name in EXTRA_INPUTS if name in needs]


def joint_function(model: nn.Module, input_shape: Sequence[int], methods: Sequence[Method],
                   layers: dict[str, LayerInfo], classifier: str | None = None, top_k: int = 1,
                   feature: FeatureTarget | None = None, sampling: Sampling = Sampling()):
    """f(params, images, targets, counterfactual, *extras) -> outputs: the forward pass, then for each
    target of an image one backward pass per rule the methods read (all sharing the forward), and the
    methods' heads.  Sampled methods (SmoothGrad, integrated gradients) run the model once more on their
    batch of points, with one backward pass per rule they read.  `extras` are the inputs extra_inputs
    names, in that order.  `classifier` names the weight of the linear layer whose rows are CAM's class
    weights.  With top_k > 1, targets are [N, k] and every map gets a k axis after N.  With a feature
    target, the score is a channel of that layer instead of a logit (input methods only).  The model runs
    as onnx_explain.exporters.class_token leaves it: a transformer's last layers on the token its head reads."""
    at_images = [m for m in methods if m.sampler is None]
    input_rules = {m.input_rule for m in at_images} - {None}
    layer_rules = {m.layer_rule for m in at_images} - {None, CLASSIFIER}
    samplers = {m.sampler: {n.input_rule for n in methods if n.sampler == m.sampler} for m in methods if m.sampler}
    deeplift = "deeplift" in input_rules
    taps = {**layers, **({feature.layer: feature.info} if feature else {})}
    model = on_read_token(model, input_shape, taps)  # the tapped layers keep every token
    extra_names = extra_inputs(methods)

    def f(params, images, targets, counterfactual, *extras):
        extra = dict(zip(extra_names, extras, strict=True))
        n = images.shape[0]
        deltas = {name: images.new_zeros((n, *info.output_shape)) for name, info in taps.items()}
        references: list[torch.Tensor] = []
        if "baselines" in extra:  # the baseline's logits, and each ReLU's and max pool's input on it
            with CallSites(record=references):
                reference_logits = torch.func.functional_call(model, params, (extra["baselines"],))
        sites = {"lrp_epsilon": extra.get("lrp_epsilon"), "references": references if deeplift else None}

        def forward(x, d):
            acts: dict[str, torch.Tensor] = {}
            with _taps(model, d, acts, taps), CallSites(**sites):
                logits = torch.func.functional_call(model, params, (x,))
            return logits, acts

        if feature:
            def feature_forward(x):
                logits, acts = forward(x, deltas)
                return acts[feature.layer], (logits, acts)

            fmap, vjp_fn, (logits, acts) = torch.func.vjp(feature_forward, images, has_aux=True)
            scores = fmap.amax(dim=(2, 3)) if feature.score == "max" else fmap.sum(dim=(2, 3))
        else:
            if input_rules:
                logits, vjp_fn, acts = torch.func.vjp(forward, images, deltas, has_aux=True)
            else:  # layer methods (or sampled ones) only: the backward passes stop at the layers
                logits, vjp_fn, acts = torch.func.vjp(lambda d: forward(images, d), deltas, has_aux=True)
            scores = logits
        sampled = {sampler: _sampled_pass(model, params, images, extra, sampler, sampling)
                   for sampler in samplers}
        # counterfactual maps (Selvaraju et al.) flip the gradient at the layer: regions against the class
        sign = 1 - 2 * counterfactual.to(images.dtype)

        def maps(target: torch.Tensor) -> dict[str, torch.Tensor]:
            if feature:
                cotangent = _feature_cotangent(fmap, target, feature.score)
            else:
                cotangent = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
            input_grads, layer_grads, out = {}, {}, {}
            for rule in sorted(input_rules | layer_rules):
                with relu_rule(rule):
                    grads = vjp_fn(cotangent)
                # grads: (d images, d deltas), (d images,) for feature targets, (d deltas,) for layers only
                input_grads[rule] = grads[0] if input_rules else None
                layer_grads[rule] = {name: layers[name].as_map(g) for name, g in grads[-1].items()} if layers else {}
            samples = {(sampler, rule): attribute(cotangent, rule)
                       for sampler, attribute in sampled.items() for rule in samplers[sampler]}
            if classifier:
                layer_grads[CLASSIFIER] = dict.fromkeys(layers, params[classifier][target][:, :, None, None])
            target_scores = {"scores": logits.gather(1, target[:, None])[:, 0]} if not feature else {}
            if "baselines" in extra:
                target_scores["reference_scores"] = reference_logits.expand_as(logits).gather(1, target[:, None])[:, 0]
            for m in (m for m in methods if m.at == "input"):
                x = HeadInputs(images, input_grads.get(m.input_rule), samples=samples.get((m.sampler, m.input_rule)),
                               baselines=extra.get("baselines"), **target_scores)
                _store(out, m.name, m.head(x))
            for name in layers:
                if "plain" in layer_grads:
                    out[f"gradient@{name}"] = layer_grads["plain"][name]
                for m in (m for m in methods if m.at == "layer"):
                    grad = layer_grads[m.layer_rule][name] * sign
                    x = HeadInputs(images, input_grads.get(m.input_rule), acts[name], grad)
                    _store(out, f"{m.name}@{name}", m.head(x))
            return out

        if top_k == 1:
            resolved = torch.where(targets < 0, scores.argmax(dim=1), targets)
            per_target = maps(resolved)
        else:  # -1 in column j: the j-th highest class (or channel)
            resolved = torch.where(targets < 0, scores.topk(top_k, dim=1).indices, targets)
            columns = [maps(target) for target in resolved.unbind(1)]
            per_target = {key: torch.stack([c[key] for c in columns], dim=1) for key in columns[0]}
        return {"logits": logits, "explained_targets": resolved,
                **{f"activation@{name}": acts[name] for name in layers}, **per_target}

    return f


def _store(out: dict, stem: str, values: tuple[torch.Tensor, ...]) -> None:
    """A head's (raw, heatmap[, delta]) as the outputs <stem>.raw, <stem>.heatmap[, <stem>.delta]."""
    for suffix, value in zip(("raw", "heatmap", "delta"), values, strict=False):
        out[f"{stem}.{suffix}"] = value


def _sampled_pass(model: nn.Module, params, images: torch.Tensor, extra: dict, sampler: Sampler,
                  sampling: Sampling):
    """Runs the model on the sampler's points as one batch [N * S * m] and returns attribute(cotangent,
    rule) -> [N, S, C, H, W]: per noisy copy (S = 1 without noise), the input gradient through the rule
    (m = 1), or integrated gradients along the copy's path from the baseline (m steps)."""
    inputs = (noisy(images, extra["noise_std"], extra["seed"], sampling.samples) if sampler.noise
              else images[:, None])
    alphas, weights = sampling.rule() if sampler.path else ([1.0], [1.0])
    points = on_path(inputs, extra["baselines"], alphas) if sampler.path else inputs[:, :, None]
    shape = points.shape[:3]

    def forward(x):
        with CallSites():
            return torch.func.functional_call(model, params, (x,))

    _, vjp_fn = torch.func.vjp(forward, points.flatten(0, 2))

    def attribute(cotangent: torch.Tensor, rule: str) -> torch.Tensor:
        spread = cotangent[:, None, None].expand(*shape, cotangent.shape[1]).flatten(0, 2)
        with relu_rule(rule):
            (grads,) = vjp_fn(spread)
        grads = grads.reshape(*shape, *grads.shape[1:])
        if not sampler.path:
            return grads[:, :, 0]
        return (inputs - extra["baselines"][:, None]) * weighted_sum(grads, weights)

    return attribute


def _feature_cotangent(fmap: torch.Tensor, channel: torch.Tensor, score: str) -> torch.Tensor:
    """d score / d fmap for the channel of each image: ones over the channel ("sum"), or one at the
    channel's first maximum ("max", where torch's max(dim) sends the gradient)."""
    n, c, h, w = fmap.shape
    chosen = torch.nn.functional.one_hot(channel, c).to(fmap.dtype)[:, :, None, None]  # [N, C, 1, 1]
    if score == "sum":
        return chosen.expand(n, c, h, w)
    plane = torch.gather(fmap, 1, channel[:, None, None, None].expand(n, 1, h, w)).reshape(n, h * w)
    peak = torch.nn.functional.one_hot(plane.argmax(dim=1), h * w).to(fmap.dtype).reshape(n, 1, h, w)
    return chosen * peak


def trace(model: nn.Module, input_shape: Sequence[int], methods: Sequence[Method],
          layers: dict[str, LayerInfo], classifier: str | None = None, top_k: int = 1,
          feature: FeatureTarget | None = None, sampling: Sampling = Sampling(),
          defaults: dict[str, torch.Tensor] | None = None) -> Traced:
    """Trace the joint function with a symbolic batch dimension (the only symbolic size); parameters
    become graph inputs.
    `defaults` holds the value of each optional input the methods read (extra_inputs)."""
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    f = joint_function(model, input_shape, methods, layers, classifier, top_k, feature, sampling)
    batch = _trace_batch(params, input_shape, top_k)
    images = torch.randn(batch, *input_shape)
    targets = torch.full(targets_shape(batch, top_k), -1, dtype=torch.int64)
    counterfactual = torch.tensor(False)
    extras = {name: (defaults or {})[name] for name in extra_inputs(methods)}
    origins = op_origins(model, images)
    for m in methods:
        if m.input_rule in RULED_OPS:
            check_ops(m.name, RULED_OPS[m.input_rule], origins)
    args = (params, images, targets, counterfactual, *extras.values())
    with linear_everywhere():
        gm, names = _trace_joint(model, f, args, origins)
    gm.graph.eliminate_dead_code()  # batch norm's backward leaves parameter gradients that nothing reads
    factors_before_pool_routing(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return Traced(gm, params, names, tuple(input_shape), origins, top_k, extras)


def _trace_joint(model: nn.Module, f, args: tuple, origins: dict[str, str]):
    """(graph, output names): f run eagerly (names the outputs, surfaces errors early), then traced."""
    try:
        eager = f(*args)
        names = list(eager)
        _check_forward(model, args[1], eager["logits"])
        gm = make_fx(_as_tuple(f), decomposition_table=decomposition_table(), tracing_mode="symbolic",
                     record_module_stack=True)(*_batch_symbolic(args))
        if any(_mutates(node) for node in gm.graph.nodes):
            # autograd's backward of some views copies into an as_strided view in place; traced again
            # functionalised, that is an as_strided_scatter the table decomposes.  (Not in the first
            # trace: functionalize cannot run the rules' autograd.Functions.)
            gm = make_fx(torch.func.functionalize(gm, remove="mutations"), decomposition_table=decomposition_table(),
                         tracing_mode="symbolic")(*_batch_symbolic(args))
    except (RuntimeError, NotImplementedError) as e:
        raise UnsupportedOpError(_explain_trace_error(e, origins)) from e
    return gm, names


def _check_forward(model: nn.Module, images: torch.Tensor, logits: torch.Tensor) -> None:
    """The instrumented forward pass must compute what the model computes (an in-place op whose result
    the model does not use would not survive the call-site rules)."""
    with torch.no_grad():
        want = model(images)
    if not torch.allclose(logits, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())):
        raise UnsupportedOpError("the forward pass changed under the methods' call-site rules (an in-place op "
                                 "whose result the model drops?); export the methods without relevance rules")


def _mutates(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable


def _batch_symbolic(args: tuple) -> tuple:
    """Fake copies of the trace's arguments whose batch dimension (the first of images and targets) is
    the one symbolic size.  Every other size stays static, as the exported graph has them: with all of
    them symbolic, token models reshaped by a product of sizes that then got baked in (vit), and
    densenet's concatenations spent minutes in symbolic shape reasoning."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    params, images, targets, *rest = args

    def fake(x, name: str, batch: bool = False):
        if not isinstance(x, torch.Tensor):
            return x
        sizes = [DimDynamic.DYNAMIC if batch and i == 0 else DimDynamic.STATIC for i in range(x.dim())]
        return mode.from_tensor(x, source=ConstantSource(name),
                                symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    return ({k: fake(v, f"param:{k}") for k, v in params.items()}, fake(images, "images", batch=True),
            fake(targets, "targets", batch=True), *(fake(x, f"extra{i}") for i, x in enumerate(rest)))


def _trace_batch(params: dict[str, torch.Tensor], input_shape: Sequence[int], top_k: int) -> int:
    """A batch size of 2 or more that no other input size equals: a shape check that compares the
    symbolic batch with an equal static size (broadcasting against a channel count, top_k or a
    parameter's size, such as a binary classifier's weight [2, F]) would specialise the batch to that
    size and bake it into the graph (a batch of 1 would specialise too)."""
    taken = {top_k, *input_shape, *(d for p in params.values() for d in p.shape)}
    return next(b for b in range(2, 10_000) if b not in taken)


def targets_shape(n: int, top_k: int) -> tuple[int, ...]:
    """The `targets` input: [N] for one target per image, [N, k] for k."""
    return (n,) if top_k == 1 else (n, top_k)


def _as_tuple(f):
    return lambda *args: tuple(f(*args).values())


class _OpRecorder(TorchDispatchMode):
    """Records, for each ATen op, the module path that first called it in an eager forward pass."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack, self.origins = stack, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.origins.setdefault(func.overloadpacket.__name__, self.stack[-1] if self.stack else "")
        return func(*args, **(kwargs or {}))


def op_origins(model: nn.Module, images: torch.Tensor) -> dict[str, str]:
    """{op name: "module path (ModuleType)"} from one eager forward pass."""
    stack: list[str] = []
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}

    def enter(name: str):
        def hook(_module, _inputs) -> None:
            stack.append(name)

        return hook

    def leave(_module, _inputs, _output) -> None:  # returning anything would replace the output
        stack.pop()

    handles = []
    for name, m in model.named_modules():
        handles += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave)]
    recorder = _OpRecorder(stack)
    try:
        with torch.no_grad(), recorder:
            model(images)
    except Exception as e:  # the trace that follows reports the real error with its context
        log.debug("recording op origins stopped at %s: %s", type(e).__name__, e)
    finally:
        for h in handles:
            h.remove()
    return {op: f"'{path or '<root>'}' ({kinds.get(path, '?')})" for op, path in recorder.origins.items()}


def _explain_trace_error(e: Exception, origins: dict[str, str]) -> str:
    text = str(e).strip()
    msg = text.splitlines()[0] if text else type(e).__name__
    ops = set(re.findall(r"aten[.:]+(\w+)", text)) | set(re.findall(r"derivative for '?(?:aten::)?(\w+)", text))
    where = []
    for op in sorted(ops):
        forward = op.removesuffix("_backward")
        known = next((k for k in origins if k in (op, forward) or k.endswith("_" + forward)), None)
        where.append(f"aten.{known} (from module {origins[known]})" if known else f"aten.{op}")
    named = "; ".join(where) or "an op of the model"
    return f"cannot trace the backward pass: {named} cannot be differentiated or traced: {msg}"
