"""What an explanation graph says about itself, stored as JSON in the ONNX metadata_props."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import onnx

KEY = "onnx_explain"
NAME = re.compile(r"[A-Za-z0-9_.+\-]+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FORMAT = 1


@dataclass(frozen=True)
class MapOutputs:
    """The output names of one method's map (at one layer, for layer methods)."""

    method: str
    layer: str | None
    raw: str
    heatmap: str
    delta: str | None = None  # [N]: how far the attributions sum from the score (change)


@dataclass(frozen=True)
class GraphInfo:
    """Everything the runtime needs to know about an exported explanation graph."""

    input_shape: tuple[int, ...]  # [C, H, W]; the batch dimension is dynamic
    num_classes: int
    class_names: tuple[str, ...]
    maps: tuple[MapOutputs, ...]
    layers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tapped layer -> [C, h, w]
    producer: str = ""
    opset: int = 0
    top_k: int = 1  # targets per image: `targets` is [N] for 1, [N, k] otherwise, and maps get a k axis
    feature: dict | None = None  # {"layer", "score", "channels"} when targets are channels of a layer
    sampling: dict = field(default_factory=dict)  # {"steps", "integration", "samples"} of the sampled methods
    points: int = 1  # images the model runs on per explained image: 1, plus each sampled pass's points
    # What the model expects of an RGB image scaled to [0, 1] and resized to input_shape: x = (image - mean)
    # / std per channel ({"mean": [C], "std": [C]}, either may be absent); None when the export did not say.
    preprocessing: dict | None = None

    @property
    def target_names(self) -> tuple[str, ...]:
        """What a target index names: a class, or a channel of the feature layer."""
        if self.feature:
            return tuple(f"{self.feature['layer']}[{c}]" for c in range(self.feature["channels"]))
        return self.class_names

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.method for m in self.maps))

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> GraphInfo:
        """Raises ValueError naming the field that is missing or not what the runtime expects."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"the metadata is {_short(data)}; expected a JSON object")
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"explanation graph metadata has an unknown format; this version reads format {FORMAT}")
        _check_fields(data)
        data["maps"] = tuple(MapOutputs(**m) for m in data["maps"])
        data["layers"] = {k: tuple(v) for k, v in data["layers"].items()}
        return cls(**{**data, "input_shape": tuple(data["input_shape"]), "class_names": tuple(data["class_names"])})


def _count(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _strings(v: object) -> bool:
    """A list of printable strings: names reach file names and terminals."""
    return isinstance(v, list) and all(isinstance(x, str) and not CONTROL.search(x) for x in v)


def _name(v: object) -> bool:
    """A method or layer name: letters, digits and _ . + - only (they become parts of file names)."""
    return isinstance(v, str) and NAME.fullmatch(v) is not None


def _shape(v: object) -> bool:
    return isinstance(v, list) and all(_count(1)(x) for x in v)


def _map(v: object) -> bool:
    names = isinstance(v, dict) and set(v) <= {"method", "layer", "raw", "heatmap", "delta"}
    layer, delta = v.get("layer") if names else None, v.get("delta") if names else None
    return names and _name(v.get("method")) and (layer is None or _name(layer)) and all(
        isinstance(v.get(k), str) for k in ("raw", "heatmap")) and (delta is None or isinstance(delta, str))


def _feature(v: object) -> bool:
    return v is None or (isinstance(v, dict) and set(v) == {"layer", "score", "channels"}
                         and isinstance(v["layer"], str) and v["score"] in ("max", "sum") and _count(1)(v["channels"]))


# field -> (required, check, what is expected)
_FIELDS: dict[str, tuple[bool, Callable[[object], bool], str]] = {
    "input_shape": (True, lambda v: _shape(v) and len(v) == 3, "[C, H, W], three positive integers"),
    "num_classes": (True, _count(1), "a positive integer"),
    "class_names": (True, _strings, "a list of strings without control characters"),
    "maps": (True, lambda v: isinstance(v, list) and len(v) > 0 and all(map(_map, v)),
             "a non-empty list of {method, layer, raw, heatmap, delta}: plain method and layer names "
             "(letters, digits, _ . + -) and string output names"),
    "layers": (False, lambda v: isinstance(v, dict) and all(map(_name, v)) and all(map(_shape, v.values())),
               "an object of layer name -> [C, h, w]"),
    "producer": (False, lambda v: isinstance(v, str), "a string"),
    "opset": (False, _count(0), "a non-negative integer"),
    "top_k": (False, _count(1), "a positive integer"),
    "feature": (False, _feature, "null or {layer, score ('max' or 'sum'), channels (a positive integer)}"),
    "sampling": (False, lambda v: isinstance(v, dict) and all(isinstance(x, (int, str)) for x in v.values()),
                 "an object of sampling settings"),
    "points": (False, _count(1), "a positive integer"),
    "preprocessing": (False, lambda v: v is None or (isinstance(v, dict) and set(v) <= {"mean", "std"} and all(
        isinstance(x, list) and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in x)
        for x in v.values()) and all(c > 0 for c in v.get("std", []))),
        "null or {mean: [C numbers], std: [C positive numbers]}"),
}


def _check_fields(data: dict) -> None:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown metadata fields {unknown}; expected {sorted(_FIELDS)}")
    for name, (required, ok, expected) in _FIELDS.items():
        if name not in data:
            if required:
                raise ValueError(f"metadata field {name!r} is missing; expected {expected}")
        elif not ok(data[name]):
            raise ValueError(f"metadata field {name!r} is {_short(data[name])}; expected {expected}")
    channels = data["input_shape"][0]
    for key, values in (data.get("preprocessing") or {}).items():
        if len(values) != channels:
            raise ValueError(f"metadata field 'preprocessing' has {len(values)} {key} values; expected one per "
                             f"channel ({channels})")
    if len(data["class_names"]) != data["num_classes"]:
        raise ValueError(f"metadata field 'class_names' has {len(data['class_names'])} names; expected one per "
                         f"class (num_classes {data['num_classes']})")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_info(model: onnx.ModelProto, info: GraphInfo) -> None:
    onnx.helper.set_model_props(model, {KEY: info.to_json()})


def read_info(model: onnx.ModelProto, source: str) -> GraphInfo:
    props = {p.key: p.value for p in model.metadata_props}
    if KEY not in props:
        raise ValueError(
            f"{source} is an ONNX model but not an onnx-explain explanation graph (no {KEY!r} metadata); "
            "export one with onnx_explain.exporters.export_explainer or `onnx-explain export`")
    try:
        return GraphInfo.from_json(props[KEY])
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{source} has corrupt onnx-explain metadata: {e}") from e


def check_graph(info: GraphInfo, session, source: str) -> None:
    """The metadata agrees with the graph ONNX Runtime loaded: every output it names exists, the targets'
    rank matches top_k, the logits have num_classes columns and top_k fits the targets there are.

    Raises:
        ValueError: naming the metadata field that disagrees with the graph.
    """
    outputs = {o.name: o.shape for o in session.get_outputs()}
    inputs = {i.name: i.shape for i in session.get_inputs()}
    images = inputs.get("images")
    if images is None or len(images) != 4 or any(
            isinstance(d, int) and d != s for d, s in zip(images[1:], info.input_shape, strict=False)):
        raise ValueError(f"{source}'s metadata field 'input_shape' is {list(info.input_shape)}; the graph's images "
                         f"input is {images}")
    named = ["logits", "explained_targets", *(n for m in info.maps for n in (m.raw, m.heatmap, m.delta) if n)]
    missing = [n for n in named if n not in outputs]
    if missing:
        raise ValueError(f"{source}'s metadata field 'maps' names outputs the graph does not have: {missing}")
    classes = outputs["logits"][1] if len(outputs["logits"]) == 2 else None
    if isinstance(classes, int) and classes != info.num_classes:
        raise ValueError(f"{source}'s metadata field 'num_classes' is {info.num_classes}; the graph's logits "
                         f"have {classes}")
    targets = inputs.get("targets")
    if targets is None or len(targets) != (1 if info.top_k == 1 else 2) or (
            info.top_k > 1 and isinstance(targets[1], int) and targets[1] != info.top_k):
        raise ValueError(f"{source}'s metadata field 'top_k' is {info.top_k}; the graph's targets input is "
                         f"{targets}")
    if info.top_k > len(info.target_names):
        raise ValueError(f"{source}'s metadata field 'top_k' is {info.top_k}, more than the "
                         f"{len(info.target_names)} targets there are")
    unknown = sorted({m.layer for m in info.maps if m.layer is not None} - set(info.layers))
    if unknown:
        raise ValueError(f"{source}'s metadata field 'maps' names layers {unknown} missing from 'layers'")
