"""Explaining whole datasets: Ray Data pipelines over exported files and plain ONNX classifiers (the `ray`
extra)."""
