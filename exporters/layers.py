"""Resolving the layer names a user asks for into modules whose output can be tapped."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from exporters.errors import LayerNotFoundError


@dataclass(frozen=True)
class LayerInfo:
    """A tapped layer: its module type and its output shape without the batch dimension."""

    kind: str
    shape: tuple[int, ...]


def resolve_layers(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> dict[str, LayerInfo]:
    """Check that each name is a module that runs once per forward pass and returns one tensor."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LayerNotFoundError(
                f"layer {name!r} is not a module of {type(model).__name__}{hint} "
                "(layers are named as in model.named_modules())")
    outputs: dict[str, list] = {name: [] for name in names}
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(out))
               for name in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    layers = {}
    for name, outs in outputs.items():
        kind = type(modules[name]).__name__
        if len(outs) != 1:
            raise LayerNotFoundError(
                f"layer {name!r} ({kind}) runs {len(outs)} times per forward pass; a layer to explain must run "
                "exactly once (a shared module such as a reused ReLU cannot be tapped: pick its parent block)")
        if not isinstance(outs[0], torch.Tensor) or outs[0].dim() != 4:
            got = tuple(outs[0].shape) if isinstance(outs[0], torch.Tensor) else type(outs[0]).__name__
            raise LayerNotFoundError(
                f"layer {name!r} ({kind}) outputs {got}; CAM methods need a [N, C, h, w] feature map")
        layers[name] = LayerInfo(kind, tuple(outs[0].shape[1:]))
    return layers
