"""What a server does with a request, apart from the protocol: decode images, run the file, pick outputs.

`Service` wraps an exported explanation graph (an Explainer) or any ONNX classifier (the pure-inference
methods) behind three calls that the KServe model of server.py maps onto its endpoints:
`infer` (Open Inference Protocol tensors in and out), `predict` and `explain` (KServe V1 instances).
Every bad request raises ValueError with a message naming what was wrong.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain.core.metadata import KEY
from onnx_explain.core.options import GRAPH_OPTIONS, OPTIONS_BY_NAME
from onnx_explain.core.result import Explanation
from onnx_explain.perturbation import METHODS as PERTURBATION_METHODS
from onnx_explain.perturbation import explain as explain_any
from onnx_explain.perturbation.classifier import classifier, layer_tensors
from onnx_explain.render.drawing import model_input, overlay, rgb_image
from onnx_explain.runtime.explainer import Explainer

TOP = 5  # classes a V1 prediction lists
# numpy dtype kind/size -> Open Inference Protocol datatype
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
             np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8"}


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the V2 model metadata lists it (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


class Service:
    """The model behind a server: an exported explanation graph, or any ONNX classifier.

    Args:
        path: the .onnx file.
        providers: ONNX Runtime execution providers (None: CUDA when present, else CPU).
        mean, std: for a plain classifier, its per-channel preprocessing of RGB images in [0, 1] (an
            exported file records its own).
    """

    def __init__(self, path: str | Path, providers=None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        proto = onnx.load(str(self.path), load_external_data=False) if self.path.stat().st_size else None
        exported = proto is not None and any(p.key == KEY for p in proto.metadata_props)
        options = None
        if threads is not None:  # ONNX Runtime's threads: a Ray actor's share of the CPUs, not all of them
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.log_severity_level = threads, 4
        self.explainer = Explainer(self.path, providers=providers, session_options=options) if exported else None
        self.model = None if exported else classifier(self.path)
        self.providers = providers
        stored = (self.explainer.info.preprocessing or {}) if exported else {}
        self.mean = mean if mean is not None else stored.get("mean")
        self.std = std if std is not None else stored.get("std")

    # What the model is

    @property
    def methods(self) -> tuple[str, ...]:
        return self.explainer.methods if self.explainer else tuple(PERTURBATION_METHODS)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.explainer:
            return self.explainer.info.class_names
        return tuple(str(i) for i in range(self.model.num_classes or 0))

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.explainer.info.input_shape[1:]) if self.explainer else self.model.size

    def inputs(self) -> list[TensorSpec]:
        if self.explainer:
            shape = [-1, *self.explainer.info.input_shape]
            targets = [-1] if self.explainer.info.top_k == 1 else [-1, self.explainer.info.top_k]
            optional = [TensorSpec(o.name, DATATYPES[np.dtype(o.dtype)], [-1, *shape[1:]] if o.shape != "[]" else [])
                        for o in GRAPH_OPTIONS if o.name in self.explainer.inputs]
            return [TensorSpec("images", "FP32", shape), TensorSpec("targets", "INT64", targets), *optional]
        return [TensorSpec("images", "FP32", [-1, *self.model.image_shape]), TensorSpec("targets", "INT64", [-1])]

    def outputs(self) -> list[TensorSpec]:
        classes = [-1, len(self.class_names) or -1]
        specs = [TensorSpec("logits", "FP32", classes), TensorSpec("explained_targets", "INT64", [-1])]
        if self.explainer:
            names = [n for m in self.explainer.info.maps for n in (m.raw, m.heatmap, m.delta) if n]
            shapes = {o.name: [-1, *(d if isinstance(d, int) else -1 for d in o.shape[1:])]
                      for o in self.explainer.session.get_outputs()}
            return specs + [TensorSpec(n, "FP32", shapes[n]) for n in names]
        for m in PERTURBATION_METHODS:
            specs += [TensorSpec(f"{m}.raw", "FP32", [-1, -1, -1]), TensorSpec(f"{m}.heatmap", "FP32", [-1, -1, -1])]
        return specs + [TensorSpec("occlusion.grid", "FP32", [-1, -1, -1])]

    # Open Inference Protocol

    def infer(self, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None,
              parameters: dict | None = None) -> dict[str, np.ndarray]:
        """V2: the named inputs (images required; targets and the file's optional inputs may be left out)
        -> the requested outputs (all when None), each with the images on axis 0.  For a plain classifier,
        `parameters` may carry "methods" and the methods' options (window, stride, layer, ...)."""
        known = {s.name for s in self.inputs()}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise ValueError(f"unknown inputs {unknown}; this model takes {sorted(known)}")
        if "images" not in inputs:
            raise ValueError("the request has no 'images' input (FP32 [N, ...], as the model takes them)")
        available = [s.name for s in self.outputs()]
        wanted = list(outputs) if outputs else None
        bad = sorted(set(wanted or ()) - set(available))
        if bad:
            raise ValueError(f"unknown outputs {bad}; this model has {available}")
        if self.explainer:
            return self._infer_exported(inputs, wanted)
        return self._infer_any(inputs, wanted, dict(parameters or {}))

    def _infer_exported(self, inputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
        options = {name: _scalar(value) if OPTIONS_BY_NAME[name].shape == "[]" else value
                   for name, value in inputs.items() if name in OPTIONS_BY_NAME}
        maps = self.explainer.info.maps
        methods = None if wanted is None else sorted(
            {m.method for m in maps if {m.raw, m.heatmap, m.delta} & set(wanted)}) or [maps[0].method]
        result = self.explainer.explain(inputs["images"], methods=methods, targets=inputs.get("targets"), **options)
        values = {"logits": result.logits, "explained_targets": result.targets}
        for m in maps:
            if (m.method, m.layer) in result.maps:
                found = result.maps[m.method, m.layer]
                values.update({m.raw: found.raw, m.heatmap: found.heatmap})
                if m.delta:
                    values[m.delta] = found.delta
        return {name: values[name] for name in (wanted or values)}

    def _infer_any(self, inputs: dict[str, np.ndarray], wanted: list[str] | None,
                   parameters: dict) -> dict[str, np.ndarray]:
        named = parameters.pop("methods", None)
        methods = ([named] if isinstance(named, str) else list(named)) if named else sorted(
            {n.split(".")[0] for n in wanted or () if "." in n})
        result = self._explain_any(inputs["images"], methods, inputs.get("targets"), parameters)
        values = {"logits": result.logits, "explained_targets": result.targets}
        for (method, _), found in result.maps.items():
            values.update({f"{method}.raw": found.raw, f"{method}.heatmap": found.heatmap})
            if found.grid is not None:
                values[f"{method}.grid"] = found.grid
        missing = sorted(set(wanted or ()) - set(values))
        if missing:
            raise ValueError(f"outputs {missing} need their methods: name them in the request's parameters "
                             "{\"methods\": [...]} or ask for their .heatmap")
        return {name: values[name] for name in (wanted or values)}

    def _explain_any(self, images: np.ndarray, methods: list[str], targets, options: dict) -> Explanation:
        if not methods:  # the scores alone: the cheapest method with no options to choose
            return explain_any(self.model, images, "eigencam", targets, providers=self.providers,
                               layer=self.default_layer())
        defaults = self.any_defaults(methods)
        return explain_any(self.model, images, methods, targets, providers=self.providers, **{**defaults, **options})

    def any_defaults(self, methods: Sequence[str]) -> dict:
        """Server defaults for the pure-inference methods' required options: windows of 1/8 of the image
        at half-window strides, a few hundred RISE masks, the last feature map for the CAMs."""
        height, width = self.model.size
        window = max(1, min(height, width) // 8)
        defaults = {"occlusion": {"window": window, "stride": max(1, window // 2)},
                    "rise": {"n_masks": 500},
                    **{m: {"layer": self.default_layer()} for m in ("eigencam", "scorecam", "ablationcam")}}
        return {k: v for m in methods for k, v in defaults.get(m, {}).items()}

    def default_layer(self) -> str:
        """The last feature map with more than one position (pooled [N, C, 1, 1] tensors are not maps)."""
        tensors = [t for t in layer_tensors(self.model) if not all(d == 1 for d in t.shape[-2:])]
        if not tensors:
            raise ValueError("the model has no feature map [N, C, h, w] for a CAM")
        return tensors[-1].name

    def explain_images(self, images: np.ndarray, methods: Sequence[str] | None = None, targets=None) -> Explanation:
        """Explanation of a batch in the model's input form, by the file's graph or, for a plain classifier,
        by the pure-inference methods with the server defaults; `methods` None: all of them."""
        if self.explainer:
            return self.explainer.explain(images, methods=methods, targets=targets)
        return self._explain_any(images, list(methods or self.methods), targets, {})

    def prepare(self, data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
        """An encoded image -> (RGB [3, H, W] in [0, 1] at the model's size, to draw on; the model's input)."""
        shown = rgb_image(data, self.size, source)
        if self.model is None:
            return shown, model_input(shown, self.mean, self.std)
        return shown, model_input(shown, self.mean, self.std, self.model.channels, self.model.layout)

    # KServe V1

    def predict(self, body: object) -> dict:
        """V1 :predict: {"instances": [{"image": ...}, ...]} -> logits and the top classes of each."""
        images = [self.image(instance)[1] for instance in _instances(body)]
        if self.explainer:
            logits = self.explainer.explain(np.stack(images), methods=[self.explainer.info.maps[0].method]).logits
        else:
            logits = self._explain_any(np.stack(images), [], None, {}).logits
        return {"predictions": [self._top(row) for row in logits]}

    def explain(self, body: object) -> dict:
        """V1 :explain: each instance's maps (heatmaps in [0, 1] at input resolution), for its "target"
        (default: the predicted class) and "methods" (default: all), with PNG overlays when the body
        asks for "overlays": true."""
        overlays = bool(body.get("overlays")) if isinstance(body, dict) else False
        return {"explanations": [self._explained(instance, overlays) for instance in _instances(body)]}

    def _explained(self, instance: dict, overlays: bool) -> dict:
        shown, x = self.image(instance)
        target = instance.get("target", -1)
        if isinstance(target, bool) or not isinstance(target, int):
            raise ValueError(f"target must be a class index (an integer), got {target!r}")
        methods = instance.get("methods") or list(self.methods)
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ValueError(f"methods must be a list of method names, got {methods!r}")
        if self.explainer:
            result = self.explainer.explain(x[None], methods=methods, targets=target if target >= 0 else None)
        else:
            result = self._explain_any(x[None], methods, target if target >= 0 else None, {})
        explained = int(np.ravel(result.targets)[0])
        out = {"target": explained, "label": self._label(explained), "logits": result.logits[0].tolist(),
               "maps": {_key(method, layer): {"heatmap": m.heatmap[0].tolist()}
                        for (method, layer), m in result.maps.items()}}
        if overlays:
            out["overlays"] = {_key(method, layer): png_data_url(overlay(shown, m.heatmap[0]))
                               for (method, layer), m in result.maps.items()}
        return out

    def image(self, instance: object) -> tuple[np.ndarray, np.ndarray]:
        """(RGB [3, H, W] in [0, 1] to draw on, the model's input [C, H, W] or [H, W, C]) of a V1 instance:
        {"image": {"b64": <PNG or JPEG>}} is decoded, resized and normalised as the model expects;
        {"image": [[[...]]]} is taken as the model's input as it is."""
        if not isinstance(instance, dict) or "image" not in instance:
            raise ValueError("each instance must be an object with an \"image\": {\"b64\": ...} or a nested list")
        image = instance["image"]
        if isinstance(image, dict):
            try:
                return self.prepare(_base64(image.get("b64")), "image.b64")
            except ValueError as e:
                raise ValueError(f"{e}; image.b64 must hold a PNG or JPEG file") from e
        x = np.asarray(image, dtype=np.float32) if _numeric(image) else None
        shape = tuple(self.explainer.info.input_shape) if self.explainer else tuple(self.model.image_shape)
        if x is None or x.shape != shape:
            got = "not a numeric nested list" if x is None else f"shape {list(x.shape)}"
            raise ValueError(f"image as a nested list must be the model's input {list(shape)}, got {got}")
        rgb = x if self.model is None or self.model.layout == "NCHW" else x.transpose(2, 0, 1)
        mean = np.asarray(self.mean if self.mean is not None else 0, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std if self.std is not None else 1, np.float32).reshape(-1, 1, 1)
        return np.clip(rgb * std + mean, 0, 1), x

    def _top(self, logits: np.ndarray) -> dict:
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")[:TOP]
        return {"logits": logits.tolist(),
                "top": [{"class": int(c), "label": self._label(int(c)), "probability": float(probabilities[c])}
                        for c in order]}

    def _label(self, index: int) -> str:
        names = self.class_names
        return names[index] if 0 <= index < len(names) else str(index)


def _base64(b64: object) -> bytes:
    if not isinstance(b64, str):
        raise ValueError("image.b64 must be a base64 string of a PNG or JPEG file")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"image.b64 is not valid base64: {e}") from e


def png_data_url(rgb: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("could not encode the overlay as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def _instances(body: object) -> list:
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ValueError("the body must be {\"instances\": [...]} with at least one instance")
    return instances


def _scalar(value: np.ndarray) -> object:
    """A per-request option sent as a V2 tensor of shape [] or [1] -> its value."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"an option input must hold one value (shape [] or [1]), got shape {list(array.shape)}")
    return array.reshape(()).item() if array.dtype != np.bool_ else bool(array.reshape(()))


def _numeric(value: object) -> bool:
    try:
        return np.asarray(value).dtype.kind in "iuf"
    except (ValueError, TypeError):  # ragged nested lists
        return False


def _key(method: str, layer: str | None) -> str:
    return method if layer is None else f"{method}@{layer}"
