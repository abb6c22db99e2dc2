"""Serving explanations: Triton model repositories for exported files (triton.py) and a KServe
ModelServer of our own (server.py, in the `serve` extra)."""
