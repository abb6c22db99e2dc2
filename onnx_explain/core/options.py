"""The optional inputs of an exported explanation graph, each declared once.

Every exported file takes `images` and `targets`, and, with a default a caller may leave out,
`counterfactual` and the inputs its methods read.  The tracer's inputs, the export's defaults,
Explainer.explain's checks, export validation and the command line's options are all derived from the
declarations below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_explain.core.inputs import check_baselines, check_flag, check_scalar


@dataclass(frozen=True)
class GraphOption:
    """An optional graph input.

    name: the graph input's name, and the keyword of Explainer.explain and export_explainer (`baseline`
        at export, one value for every image).
    dtype, shape: what the graph takes ("[]" a scalar, or "[1, C, H, W]").
    default: export_explainer's default, which the file stores as the input's initializer.
    check: (value, images in the call, one image's shape) -> the array fed to the graph; raises ValueError.
    help: one line for the docs and the command line.
    cli_type: how the command line parses one value (bool: a flag).
    varied: validation also runs the file at another value than the default, because the file
        caches the default's work (see onnx_explain.exporters.default_inputs).
    """

    name: str
    dtype: type
    shape: str
    default: object
    check: Callable[[object, int, Sequence[int]], np.ndarray]
    help: str
    cli_type: type
    varied: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: --noise-std for noise_std; --baseline for baselines (one number)."""
        return "--" + ("baseline" if self.name == "baselines" else self.name).replace("_", "-")

    def default_value(self, input_shape: Sequence[int]) -> np.ndarray:
        return self.check(self.default, 1, input_shape)


def _flag(name: str) -> Callable:
    return lambda value, n, shape: check_flag(name, value)


def _scalar(name: str, kind: str) -> Callable:
    return lambda value, n, shape: check_scalar(name, value, kind)


GRAPH_OPTIONS: tuple[GraphOption, ...] = (
    GraphOption("counterfactual", np.bool_, "[]", False, _flag("counterfactual"),
                "CAM-family maps of the regions that argue against the target (the layer's gradient negated)",
                bool),
    GraphOption("baselines", np.float32, "[1, C, H, W]", 0.0, check_baselines,
                "the reference input of deeplift and integrated gradients (a number, [C, H, W] or one per image)",
                float, varied=True),
    GraphOption("seed", np.int64, "[]", 0, _scalar("seed", "i"),
                "the SmoothGrad family's noise seed: the same seed gives the same maps", int, varied=True),
    GraphOption("noise_std", np.float32, "[]", 0.15, _scalar("noise_std", "f"),
                "the standard deviation of SmoothGrad's Gaussian noise, in input units", float),
    GraphOption("lrp_epsilon", np.float32, "[]", 1e-9, _scalar("lrp_epsilon", "f"),
                "the stabiliser of lrp_epsilon (captum's EpsilonRule default is 1e-9)", float),
)
OPTIONS_BY_NAME = {o.name: o for o in GRAPH_OPTIONS}
