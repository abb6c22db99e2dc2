"""onnx-explain: explanations of CNN image classifiers from ONNX Runtime alone (no torch)."""

__version__ = "0.1.0"
