"""Tracing the joint forward + backward function of a model into one ATen-level FX graph."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from exporters.decompositions import aten__adaptive_avg_pool2d, decomposition_table
from exporters.errors import UnsupportedOpError
from exporters.layers import LayerInfo
from exporters.methods import CLASSIFIER, HeadInputs, Method
from exporters.rules import relu_rule

TRACE_BATCH = 2  # a batch of 1 would let the tracer specialise N to a constant


@dataclass
class Traced:
    """The traced graph, the parameters it takes first, and the names of its outputs in order."""

    graph: torch.fx.GraphModule
    params: dict[str, torch.Tensor]
    output_names: list[str]
    input_shape: tuple[int, ...]
    origins: dict[str, str]  # ATen op name -> the module that first called it


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


class _PlainAdaptivePool(TorchFunctionMode):
    """Routes F.adaptive_avg_pool2d to the matrix form (see aten__adaptive_avg_pool2d)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.adaptive_avg_pool2d:
            x, size = args[0], args[1] if len(args) > 1 else (kwargs or {})["output_size"]
            size = [size, size] if isinstance(size, int) else [x.shape[-2 + i] if s is None else s
                                                               for i, s in enumerate(size)]
            return aten__adaptive_avg_pool2d(x, size)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _taps(model: nn.Module, deltas: dict[str, torch.Tensor], acts: dict[str, torch.Tensor]) -> Iterator[None]:
    """Adds deltas[name] (zeros) to each tapped layer's output and records the result.

    The gradient with respect to a zero delta is the gradient at the layer's output, and the backward
    pass of a vjp taken only with respect to the deltas stops at the layers.
    """
    modules = dict(model.named_modules())

    def hook(name: str):
        def add(_module, _inputs, output):
            tapped = output + deltas[name]
            acts[name] = tapped
            return tapped

        return add

    handles = [modules[name].register_forward_hook(hook(name)) for name in deltas]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def joint_function(model: nn.Module, methods: Sequence[Method], layers: dict[str, LayerInfo],
                   classifier: str | None = None):
    """f(params, images, targets, counterfactual) -> outputs: the forward pass, one backward pass per ReLU
    rule the methods read (all sharing the forward), and the methods' heads.  `classifier` names the
    weight of the linear layer whose rows are CAM's class weights."""
    input_rules = {m.input_rule for m in methods} - {None}
    layer_rules = {m.layer_rule for m in methods} - {None, CLASSIFIER}

    def f(params, images, targets, counterfactual):
        n = images.shape[0]
        deltas = {name: images.new_zeros((n, *info.shape)) for name, info in layers.items()}

        def forward(x, d):
            acts: dict[str, torch.Tensor] = {}
            with _taps(model, d, acts), _PlainAdaptivePool():
                logits = torch.func.functional_call(model, params, (x,))
            return logits, acts

        if input_rules:
            logits, vjp_fn, acts = torch.func.vjp(forward, images, deltas, has_aux=True)
        else:  # layer methods only: the backward passes stop at the layers
            logits, vjp_fn, acts = torch.func.vjp(lambda d: forward(images, d), deltas, has_aux=True)
        resolved = torch.where(targets < 0, logits.argmax(dim=1), targets)
        cotangent = torch.nn.functional.one_hot(resolved, logits.shape[1]).to(logits.dtype)
        input_grads, layer_grads = {}, {}
        for rule in sorted(input_rules | layer_rules):
            with relu_rule(rule):
                grads = vjp_fn(cotangent)
            input_grads[rule], layer_grads[rule] = (grads[0] if input_rules else None), grads[-1]
        if classifier:
            weights = params[classifier][resolved][:, :, None, None]
            layer_grads[CLASSIFIER] = dict.fromkeys(layers, weights)
        out = {"logits": logits, "explained_targets": resolved}
        for m in methods:
            if m.at == "input":
                out[f"{m.name}.raw"], out[f"{m.name}.heatmap"] = m.head(HeadInputs(images, input_grads[m.input_rule]))
        # counterfactual maps (Selvaraju et al.) flip the gradient at the layer: regions against the class
        sign = 1 - 2 * counterfactual.to(images.dtype)
        for name in layers:
            out[f"activation@{name}"] = acts[name]
            if "plain" in layer_grads:
                out[f"gradient@{name}"] = layer_grads["plain"][name]
            for m in (m for m in methods if m.at == "layer"):
                grad = layer_grads[m.layer_rule][name] * sign
                x = HeadInputs(images, input_grads.get(m.input_rule), acts[name], grad)
                out[f"{m.name}@{name}.raw"], out[f"{m.name}@{name}.heatmap"] = m.head(x)
        return out

    return f


def trace(model: nn.Module, input_shape: Sequence[int], methods: Sequence[Method],
          layers: dict[str, LayerInfo], classifier: str | None = None) -> Traced:
    """Trace the joint function with a symbolic batch dimension; parameters become graph inputs."""
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    f = joint_function(model, methods, layers, classifier)
    images = torch.randn(TRACE_BATCH, *input_shape)
    targets = torch.full((TRACE_BATCH,), -1, dtype=torch.int64)
    counterfactual = torch.tensor(False)
    origins = op_origins(model, images)
    try:
        names = list(f(params, images, targets, counterfactual))  # eager: names the outputs, surfaces errors early
        gm = make_fx(_as_tuple(f), decomposition_table=decomposition_table(), tracing_mode="symbolic",
                     record_module_stack=True)(params, images, targets, counterfactual)
    except (RuntimeError, NotImplementedError) as e:
        raise UnsupportedOpError(_explain_trace_error(e, origins)) from e
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return Traced(gm, params, names, tuple(input_shape), origins)


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
    except Exception:  # the trace that follows reports the real error with its context
        pass
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
