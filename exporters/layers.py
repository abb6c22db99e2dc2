"""Resolving the layer names a user asks for into modules whose output can be tapped."""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from onnx_explain.exporters.errors import LayerNotFoundError

ALL_CONV = "all-conv"  # layers=ALL_CONV taps the output of every convolution


@dataclass(frozen=True)
class LayerInfo:
    """A tapped layer: its module type and its feature map's shape without the batch dimension.  A token
    layer (vision transformers) outputs [N, tokens, C]; its map is the grid of its last h * w tokens."""

    kind: str
    shape: tuple[int, ...]  # [C, h, w] of the feature map (a token layer's grid)
    tokens: int = 0  # a token layer's number of tokens, 0 for a layer that outputs a feature map

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The module's own output shape without the batch dimension."""
        return (self.tokens, self.shape[0]) if self.tokens else self.shape

    def as_map(self, output: torch.Tensor) -> torch.Tensor:
        """The module's output (or a gradient of its shape) as a feature map [N, C, h, w]: a token layer's
        leading tokens (the class token) dropped and the rest laid out row by row, as pytorch-grad-cam's
        reshape_transform does."""
        if not self.tokens:
            return output
        _, h, w = self.shape
        return output[:, self.tokens - h * w:].unflatten(1, (h, w)).permute(0, 3, 1, 2)


def check_names(model: nn.Module, names: Sequence[object], argument: str = "layers") -> list[str]:
    """The layer names as given, checked without running the model: strings, each once, each a module.

    Raises:
        ValueError: a name that is not a string, or one given twice; `argument` names the argument.
        LayerNotFoundError: a name that is not a module of the model (close candidates are listed).
    """
    odd = [n for n in names if not isinstance(n, str)]
    if odd:
        raise ValueError(f"{argument} must be module names (strings, as in model.named_modules()), got {odd[0]!r} "
                         f"({type(odd[0]).__name__})")
    repeated = [n for n, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"layer {repeated[0]!r} is repeated in {argument}; name each layer once")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LayerNotFoundError(
                f"layer {name!r} is not a module of {type(model).__name__}{hint} "
                "(layers are named as in model.named_modules())")
    return list(names)


def resolve_layers(model: nn.Module, names: Sequence[str], input_shape: Sequence[int],
                   token_grid: Sequence[int] | None = None, needs: str = "CAM methods need") -> dict[str, LayerInfo]:
    """Check that each name is a module that runs once per forward pass and returns one feature map, or
    tokens [N, T, C] that `token_grid` (h, w) lays out as one.  `needs` says, in the message for a layer
    without a feature map, who needs one ("CAM methods need", "feature_layer needs").

    Raises:
        ValueError: as check_names.
        LayerNotFoundError: a name that is not a module, a module that runs more or less than once per
            forward pass, or one whose output is no feature map (nor tokens with token_grid).
    """
    check_names(model, names)
    modules = dict(model.named_modules())
    outputs = _layer_outputs(model, names, torch.zeros(1, *input_shape))[1]
    layers = {}
    for name, outs in outputs.items():
        kind = type(modules[name]).__name__
        if len(outs) != 1:
            raise LayerNotFoundError(
                f"layer {name!r} ({kind}) runs {len(outs)} times per forward pass; a layer to explain must run "
                "exactly once (a shared module such as a reused ReLU cannot be tapped: pick its parent block)")
        out = outs[0]
        if isinstance(out, torch.Tensor) and out.dim() == 3:
            layers[name] = _token_layer(name, kind, tuple(out.shape[1:]), token_grid)
            continue
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LayerNotFoundError(
                f"layer {name!r} ({kind}) outputs {got}; {needs} a [N, C, h, w] feature map "
                "(or tokens [N, T, C] with token_grid)")
        layers[name] = LayerInfo(kind, tuple(out.shape[1:]))
    return layers


def _token_layer(name: str, kind: str, shape: tuple[int, int], token_grid: Sequence[int] | None) -> LayerInfo:
    tokens, channels = shape
    if token_grid is None:
        side = math.isqrt(tokens - 1) if tokens > 1 else 0
        hint = f" (token_grid=({side}, {side}) after one class token)" if side * side == tokens - 1 else ""
        raise LayerNotFoundError(
            f"layer {name!r} ({kind}) outputs tokens [N, {tokens}, {channels}]; give token_grid=(h, w), the grid "
            f"its last h * w tokens form{hint}")
    h, w = (int(v) for v in token_grid)
    if h < 1 or w < 1 or h * w > tokens:
        raise ValueError(f"token_grid {h} x {w} needs {h * w} tokens; layer {name!r} outputs {tokens}")
    return LayerInfo(kind, (channels, h, w), tokens)


def conv_layers(model: nn.Module) -> list[str]:
    """The names of every 2-D convolution of the model, in module order."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise LayerNotFoundError(f"layers={ALL_CONV!r}: {type(model).__name__} has no nn.Conv2d module")
    return names


def pooled_classifier(model: nn.Module, layers: dict[str, LayerInfo], input_shape: Sequence[int]) -> str:
    """The weight of the linear layer that maps the global average of each layer's output to the logits,
    which is the head CAM (Zhou et al.) needs; checked on random images, not guessed from module types.

    Raises:
        ValueError: some layer's output does not reach the logits that way; it names the layer.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cam needs a model whose head is global average pooling then one linear layer; "
                         f"{type(model).__name__} has no nn.Linear (use gradcam, which needs no such head)")
    name, fc = linears[-1]
    images = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    logits, outputs = _layer_outputs(model, list(layers), images)
    for layer, info in layers.items():
        # as the model left it: torchvision densenet rectifies its features in place
        act = info.as_map(outputs[layer][0])
        pooled = act.mean(dim=(2, 3)) if act.dim() == 4 and act.shape[1] == fc.in_features else None
        if pooled is None or not torch.allclose(nn.functional.linear(pooled, fc.weight, fc.bias), logits,
                                                rtol=1e-4, atol=1e-4 * float(logits.abs().max())):
            raise ValueError(
                f"cam needs global average pooling then one linear layer between layer {layer!r} and the logits; "
                f"in {type(model).__name__} the mean of {layer!r}'s output [{act.shape[1]} channels] through "
                f"{name!r} ({fc.in_features} -> {fc.out_features}) does not give the logits (use gradcam)")
    return f"{name}.weight"


def _layer_outputs(model: nn.Module, names: Sequence[str], images: torch.Tensor) -> tuple[object, dict[str, list]]:
    """(the model's output, {name: every output of that module}) for one forward pass without gradients."""
    modules = dict(model.named_modules())
    outputs: dict[str, list] = {name: [] for name in names}
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(out))
               for name in names]
    try:
        with torch.no_grad():
            result = model(images)
    finally:
        for h in handles:
            h.remove()
    return result, outputs
