"""The PyTorch side of onnx-explain: traces forward and backward passes into one ONNX graph."""

from exporters import rules  # noqa: F401  (registers the ReLU rule decomposition)
from exporters.errors import ExportError, ExportValidationError, LayerNotFoundError, UnsupportedOpError
from exporters.export import export_explainer
from exporters.methods import GRADIENT_FAMILY, METHODS, RELEVANCE_FAMILY

__all__ = ["GRADIENT_FAMILY", "METHODS", "RELEVANCE_FAMILY", "ExportError", "ExportValidationError",
           "LayerNotFoundError", "UnsupportedOpError", "export_explainer"]
