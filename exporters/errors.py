"""Typed errors of the exporter: each names what was wrong and what was expected."""


class ExportError(RuntimeError):
    """Base class of every error raised while building an explanation graph."""


class LayerNotFoundError(ExportError, ValueError):
    """A requested layer name is not a module of the model."""


class UnsupportedOpError(ExportError):
    """An op of the traced graph cannot be differentiated or has no ONNX translation."""


class ExportValidationError(ExportError):
    """The exported ONNX file disagrees with the torch graph it came from."""
