"""onnx-explain: explanations of CNN image classifiers from ONNX Runtime alone (no torch).

    >>> from onnx_explain import Explainer, overlay
    >>> result = Explainer("model.onnx").explain(images, methods=["gradcam"])
    >>> picture = overlay(images[0], result["gradcam"].heatmap[0])
"""

__version__ = "0.1.0"

from onnx_explain.activation_cams import ablationcam, cam_graph, eigencam, scorecam
from onnx_explain.class_model import ClassModel, class_model
from onnx_explain.classifier import Classifier, Tensor, classifier, layer_tensors
from onnx_explain.explainer import Explainer
from onnx_explain.localize import boxes
from onnx_explain.metadata import GraphInfo, MapOutputs
from onnx_explain.occlusion import occlusion, occlusion_graph
from onnx_explain.pointing import pointing_hits
from onnx_explain.render import load_image, overlay, save_png
from onnx_explain.result import Explanation, Map
from onnx_explain.rise import rise, rise_graph, rise_masks
from onnx_explain.scoring import Attribution

__all__ = ["Attribution", "ClassModel", "Classifier", "Explainer", "Explanation", "GraphInfo", "Map", "MapOutputs",
           "Tensor", "__version__", "ablationcam", "boxes", "cam_graph", "class_model", "classifier", "eigencam",
           "layer_tensors", "load_image", "occlusion", "occlusion_graph", "overlay", "pointing_hits", "rise",
           "rise_graph", "rise_masks", "save_png", "scorecam"]
