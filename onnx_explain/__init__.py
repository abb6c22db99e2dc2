"""onnx-explain: explanations of image classifiers from ONNX Runtime alone (no torch).

    >>> from onnx_explain import Explainer, overlay
    >>> result = Explainer("model.onnx").explain(images, methods=["gradcam"])
    >>> picture = overlay(images[0], result["gradcam"].heatmap[0])
"""

try:
    import onnxruntime  # noqa: F401
except ImportError as e:  # neither extra installed
    raise ImportError("onnx-explain needs ONNX Runtime: pip install 'onnx-explain[cpu]', or 'onnx-explain[gpu]' "
                      "for the CUDA execution provider (one of the two: they install the same module)") from e

from onnx_explain.core import __version__  # noqa: E402
from onnx_explain.core.metadata import GraphInfo, MapOutputs
from onnx_explain.core.result import Explanation, Map
from onnx_explain.perturbation import explain
from onnx_explain.perturbation.activation_cams import ablationcam, cam_graph, eigencam, scorecam
from onnx_explain.perturbation.classifier import Classifier, Tensor, classifier, layer_tensors
from onnx_explain.perturbation.occlusion import occlusion, occlusion_graph
from onnx_explain.perturbation.rise import rise, rise_graph, rise_masks
from onnx_explain.render.drawing import load_image, overlay, save_png
from onnx_explain.render.localize import boxes
from onnx_explain.render.pointing import pointing_hits
from onnx_explain.runtime.class_model import ClassModel, class_model
from onnx_explain.runtime.explainer import Explainer


def __getattr__(name: str):
    """explain_dataset, imported on first use: it needs Ray (the `ray` extra), which `import onnx_explain`
    does not import."""
    if name == "explain_dataset":
        from onnx_explain.datasets.ray_explain import explain_dataset

        return explain_dataset
    raise AttributeError(f"module 'onnx_explain' has no attribute {name!r}")


__all__ = ["ClassModel", "Classifier", "Explainer", "Explanation", "GraphInfo", "Map", "MapOutputs", "Tensor",
           "__version__", "ablationcam", "boxes", "cam_graph", "class_model", "classifier", "eigencam", "explain",
           "layer_tensors", "load_image", "occlusion", "occlusion_graph", "overlay", "pointing_hits", "rise",
           "rise_graph", "rise_masks", "save_png", "scorecam"]
