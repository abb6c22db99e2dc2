"""The PyTorch side of onnx-explain: traces forward and backward passes into one ONNX graph."""

from onnx_explain.exporters import rules  # noqa: F401  (registers the ReLU rule decomposition)
from onnx_explain.exporters.errors import ExportError, ExportValidationError, LayerNotFoundError, UnsupportedOpError
from onnx_explain.exporters.export import export_explainer
from onnx_explain.exporters.methods import GRADIENT_FAMILY, METHODS, RELEVANCE_FAMILY

__all__ = ["GRADIENT_FAMILY", "METHODS", "RELEVANCE_FAMILY", "ExportError", "ExportValidationError",
           "LayerNotFoundError", "UnsupportedOpError", "export_explainer"]
