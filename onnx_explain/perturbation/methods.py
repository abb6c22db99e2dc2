"""The registry of the pure-inference methods: each is one function from a classifier, checked images
and targets to its map, registered by name with the options it takes.  onnx_explain.explain and the
command line are built from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_explain.core.result import Map

REQUIRED = object()  # an option without a default


@dataclass(frozen=True)
class Option:
    """One keyword option of a method: its name, how the command line parses it (`parse`, one string
    to a value), its default (REQUIRED: none) and a line of help."""

    name: str
    parse: Callable[[str], object]
    default: object
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Settings:
    """What every method takes: the score whose change is measured ("prob" or "logit"), images per model
    run (None: the method's default), and ONNX Runtime's execution providers."""

    score: str
    batch_size: int | None
    providers: object


@dataclass(frozen=True)
class Outcome:
    """One method's run: the logits [N, classes] of the unperturbed images, the targets it explained
    int64 [N], and its map."""

    logits: np.ndarray
    targets: np.ndarray
    map: Map


Run = Callable[..., Outcome]  # (classifier, images, targets, Settings, **options) -> Outcome


@dataclass(frozen=True)
class PerturbationMethod:
    """name: as used in methods=[...]; summary: one line (the paper); run: the method's unit;
    options: the keyword options it takes; class_specific: whether the map depends on the target."""

    name: str
    summary: str
    run: Run
    options: tuple[Option, ...]
    class_specific: bool = True


METHODS: dict[str, PerturbationMethod] = {}


def method(name: str, *, summary: str, options: tuple[Option, ...] = (), class_specific: bool = True) -> Callable:
    """Register the decorated function as the pure-inference method `name`.

    Args:
        name: the method's name in methods=[...] and its command-line subcommand.
        summary: one line for --help: what it computes and the paper.
        options: its keyword options, in the order the command line lists them.
        class_specific: False for a class-agnostic map (Eigen-CAM).

    Raises:
        ValueError: a name registered twice.
    """
    if name in METHODS:
        raise ValueError(f"cannot register method {name!r}: the name is registered twice")

    def register(run: Run) -> Run:
        METHODS[name] = PerturbationMethod(name, summary, run, tuple(options), class_specific)
        return run

    return register
