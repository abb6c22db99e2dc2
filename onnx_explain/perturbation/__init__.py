"""Pure-inference methods around any ONNX classifier (occlusion, RISE, Score-, Eigen- and Ablation-CAM):
each builds one ONNX graph around the user's model and runs it with ONNX Runtime.  `explain` runs any
of them by name; METHODS is their registry."""

from onnx_explain.perturbation import activation_cams, occlusion, rise  # noqa: F401  (register the methods)
from onnx_explain.perturbation.dispatch import explain
from onnx_explain.perturbation.methods import METHODS

__all__ = ["METHODS", "explain"]
