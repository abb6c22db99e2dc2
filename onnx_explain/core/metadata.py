"""What an explanation graph says about itself, stored as JSON in the ONNX metadata_props."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import onnx

KEY = "onnx_explain"
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
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"explanation graph metadata has an unknown format; this version reads format {FORMAT}")
        data["maps"] = tuple(MapOutputs(**m) for m in data["maps"])
        data["layers"] = {k: tuple(v) for k, v in data["layers"].items()}
        return cls(**{**data, "input_shape": tuple(data["input_shape"]), "class_names": tuple(data["class_names"])})


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
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source} has corrupt onnx-explain metadata: {e}") from e
