"""onnx-explain: explanations of CNN image classifiers from ONNX Runtime alone (no torch).

    >>> from onnx_explain import Explainer, overlay
    >>> result = Explainer("model.onnx").explain(images, methods=["gradcam"])
    >>> picture = overlay(images[0], result["gradcam"].heatmap[0])
"""

__version__ = "0.1.0"

from onnx_explain.class_model import ClassModel, class_model
from onnx_explain.explainer import Explainer
from onnx_explain.localize import boxes
from onnx_explain.metadata import GraphInfo, MapOutputs
from onnx_explain.pointing import pointing_hits
from onnx_explain.render import load_image, overlay, save_png
from onnx_explain.result import Explanation, Map

__all__ = ["ClassModel", "Explainer", "Explanation", "GraphInfo", "Map", "MapOutputs", "__version__", "boxes",
           "class_model", "load_image", "overlay", "pointing_hits", "save_png"]
