"""Where each occlusion window changes each layer of a CNN: the static half of incremental occlusion.

Covering a window changes a rectangle of the image.  Through a convolution or a pooling the rectangle
grows by the kernel's reach and shrinks by the stride; through an element-wise op it stays where it is;
where branches meet (Add, Mul, Concat) it is their bounding box.  Along each spatial axis, for every
window position, a `Span` records the changed interval and the stored one: one length per tensor (the
longest changed interval, so that a chunk of windows stacks into one tensor) whose start is shifted to
stay inside the map.  Values in the stored interval but outside the changed one equal the clean
image's, so whatever a patch holds is exact.

The region ends where a patch covers its whole map, or at an op without a rule here (global pooling,
Flatten, Gemm, MatMul, Reshape, attention, anything unknown): there the patches are written back into
full tensors and the rest of the model runs as it is (`Region.frontier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import onnx

from onnx_explain.core.graph import needed_nodes, outer_names
from onnx_explain.perturbation.classifier import Classifier, inferred_graph

POINTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
             "Softsign", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "Sin", "Cos", "Floor",
             "Ceil", "Round", "Sign", "Identity", "Dropout", "Clip", "ThresholdedRelu", "BatchNormalization"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}
WINDOWED = {"Conv", "MaxPool", "AveragePool"}


@dataclass(frozen=True)
class Span:
    """One spatial axis of a tensor's patches, over the window positions along that axis: the changed
    interval [lo, hi) of each position and the stored one [start, start + length)."""

    size: int
    lo: np.ndarray
    hi: np.ndarray
    length: int

    @property
    def start(self) -> np.ndarray:
        return np.clip(self.lo, 0, self.size - self.length)

    @property
    def full(self) -> bool:
        return self.length == self.size


def span(size: int, lo: np.ndarray, hi: np.ndarray) -> Span:
    lo = np.clip(lo, 0, size)
    hi = np.maximum(np.clip(hi, 0, size), lo)
    return Span(size, lo, hi, min(size, max(1, int((hi - lo).max()))))


@dataclass(frozen=True)
class Layout:
    """The axes a rank-4 tensor keeps its channels, height and width on (the batch is axis 0)."""

    channel: int
    height: int
    width: int

    @property
    def to_internal(self) -> list[int]:
        """The permutation to [batch, height, width, channels], the layout patches are kept in: there a
        read is one Gather, and ONNX Runtime's blocked convolutions take and give it without a
        separate transpose."""
        return [0, self.height, self.width, self.channel]


NCHW, NHWC = Layout(1, 2, 3), Layout(3, 1, 2)


@dataclass(frozen=True)
class Patch:
    """A tensor's patches: rows and cols along the image's height and width axes, wherever the
    tensor keeps them; internally every patch is [windows x images, rows, cols, channels]."""

    rows: Span
    cols: Span
    layout: Layout
    channels: int

    @property
    def full(self) -> bool:
        return self.rows.full and self.cols.full


@dataclass(frozen=True)
class Read:
    """A step's read of a tensor: its values on the rows [row_start, + rows) and the cols of the map
    padded by `pads` (top, bottom, left, right) of `fill`, the tensor's patches pasted in."""

    tensor: str
    row_start: np.ndarray  # [row positions]
    rows: int
    col_start: np.ndarray  # [col positions]
    cols: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    fill: float = 0.0

    @property
    def padding(self) -> tuple[str, tuple[int, int, int, int], float]:
        """What the clean tensor is padded with for this read (reads sharing it share one copy)."""
        return self.tensor, self.pads, self.fill

    def is_store_of(self, patch: Patch) -> bool:
        """Whether the read is exactly the patches (no clean values to paste around them)."""
        return (self.pads == (0, 0, 0, 0) and self.rows == patch.rows.length and self.cols == patch.cols.length
                and np.array_equal(self.row_start, patch.rows.start) and np.array_equal(self.col_start,
                                                                                         patch.cols.start))


@dataclass(frozen=True)
class Step:
    """One node of the model run on patches: `reads` maps an input's index to how it is read (the
    other inputs are the model's constants); `attributes` replace the node's own (None drops one);
    `macs` per window; `relaid` maps a constant operand's index to its rank where it must be laid out
    as the patches are (a per-channel constant of a tensor not kept channels last)."""

    node: onnx.NodeProto
    reads: dict[int, Read]
    attributes: dict
    out: Patch
    macs: int
    relaid: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Region:
    """The incremental plan of a model for one window grid: the image's patches, the steps in graph
    order, the tensors the rest of the model reads (written back in full), and multiply-adds per window
    of both plans, and the elements of the largest tensor each holds per window."""

    patches: dict[str, Patch]
    steps: tuple[Step, ...]
    frontier: tuple[str, ...]
    incremental_macs: int
    full_macs: int
    incremental_peak: int
    full_peak: int

    @property
    def image(self) -> str:
        """The model's image input, the first tensor with patches."""
        return next(iter(self.patches))

    def windows_per_image(self, images: int) -> int:
        """Windows that take the memory of `images` occluded images through the full model (at least
        `images`): a chunk of patches is smaller than a batch of images."""
        return images * max(1, self.full_peak // max(self.incremental_peak, 1))


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Where the windows start along one axis: 0, stride, ... while the window fits (captum's positions)."""
    return np.arange(0, size - window + 1, stride)


def region(model: Classifier, outputs: tuple[str, ...], window: tuple[int, int], rows: tuple[int, ...],
           cols: tuple[int, ...], within: frozenset[str] | None = None) -> Region:
    """The incremental plan of the windows `window` large that start at `rows` x `cols` (pixels),
    computing the model's `outputs`; with `within`, only the nodes with those outputs run on patches."""
    return _region(model, outputs, window, rows, cols, within)


@lru_cache(maxsize=64)
def _region(model: Classifier, outputs: tuple[str, ...], window: tuple[int, int], rows: tuple[int, ...],
            cols: tuple[int, ...], within: frozenset[str] | None) -> Region:
    graph = model.model.graph
    shapes = _shapes(model)
    nodes = needed_nodes(graph, outputs, ())
    static = _static(graph, nodes)
    allowed = nodes if within is None else [n for n in nodes if n.output[0] in within]
    steps, patches = _spread(model, allowed, static, window, rows, cols)
    in_region = {id(s.node) for s in steps}
    read_outside = {i for n in nodes if id(n) not in in_region for i in (*n.input, *outer_names(n))} | set(outputs)
    frontier = tuple(t for t in patches if t in read_outside)
    dynamic = [n for n in nodes if n.input and not all(i in static for i in n.input if i)]
    rest = [n for n in dynamic if id(n) not in in_region]  # run on full tensors in both plans
    macs = sum(_macs(n, shapes) for n in rest) + sum(s.macs for s in steps)
    full_peak = max((_elements(shapes.get(o)) for n in dynamic for o in (*n.input, *n.output)), default=1)
    patch_peak = max([_elements(shapes.get(t)) for t in frontier]
                     + [_elements(shapes.get(o)) for n in rest for o in n.output]
                     + [s.out.channels * s.out.rows.length * s.out.cols.length for s in steps]
                     + [patches[r.tensor].channels * r.rows * r.cols for s in steps for r in s.reads.values()],
                     default=1)
    return Region(patches, tuple(steps), frontier, macs, sum(_macs(n, shapes) for n in dynamic), patch_peak,
                  full_peak)


def _spread(model: Classifier, nodes: list[onnx.NodeProto], static: set[str], window: tuple[int, int],
           rows: tuple[int, ...], cols: tuple[int, ...]) -> tuple[list[Step], dict]:
    """(steps, patches): the windows' patches carried through `nodes` in graph order, up to where a
    patch covers its map or no rule applies."""
    layout = NCHW if model.layout == "NCHW" else NHWC
    (height, width), channels = model.size, model.channels
    rows, cols = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    patches = {model.image: Patch(span(height, rows, rows + window[0]), span(width, cols, cols + window[1]),
                                  layout, channels)}
    shapes = _shapes(model)
    steps, ended = [], set()
    for node in nodes:
        if not any(i in patches for i in node.input) or any(i in ended for i in node.input):
            continue
        step = _step(node, patches, static, shapes)
        if step is not None:
            steps.append(step)
            patches[node.output[0]] = step.out
            if step.out.full:
                ended.add(node.output[0])
    return steps, patches


def _step(node: onnx.NodeProto, patches: dict[str, Patch], static: set[str], shapes: dict) -> Step | None:
    """The node on patches, or None where no rule applies (its patched inputs are then written back)."""
    out = node.output[0]
    if len([o for o in node.output if o]) != 1 or node.domain not in ("", "ai.onnx"):
        return None
    if not all(i in patches or i in static or not i for i in node.input):
        return None  # a second image-dependent input the region does not hold
    dims = shapes.get(out)
    if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        return None
    if node.op_type in POINTWISE:
        return _pointwise(node, patches, static, shapes, dims)
    if node.op_type in BROADCAST or node.op_type == "Concat":
        return _join(node, patches, static, shapes, dims)
    if node.op_type in WINDOWED:
        return _windowed(node, patches, shapes, dims)
    if node.op_type == "Transpose":
        return _transpose(node, patches[node.input[0]])
    return None


def _pointwise(node, patches, static, shapes, dims) -> Step | None:
    """Element-wise with constant parameters: the patches stay where they are."""
    source = patches.get(node.input[0])
    if source is None or any(i in patches for i in node.input[1:]):
        return None
    if node.op_type == "BatchNormalization" and source.layout != NCHW:
        return None
    return Step(node, {0: stored(node.input[0], source)}, {}, _same_place(source, dims), 0)


def _join(node, patches, static, shapes, dims) -> Step | None:
    """Add, Mul, Concat and kin: the bounding box of the inputs' patches; a constant operand may vary
    over channels but not over the map."""
    held = [patches[i] for i in node.input if i in patches]
    layout = held[0].layout
    if any(p.layout != layout or (p.rows.size, p.cols.size) != (held[0].rows.size, held[0].cols.size) for p in held):
        return None
    if node.op_type == "Concat":
        axis = _attribute(node, "axis", 0) % 4
        if axis != layout.channel or any(i not in patches for i in node.input):
            return None
    elif not all(_flat_over_map(shapes.get(i), layout) for i in node.input if i not in patches):
        return None
    rows = span(held[0].rows.size, np.min([p.rows.lo for p in held], 0), np.max([p.rows.hi for p in held], 0))
    cols = span(held[0].cols.size, np.min([p.cols.lo for p in held], 0), np.max([p.cols.hi for p in held], 0))
    out = Patch(rows, cols, layout, dims[layout.channel])
    reads = {k: Read(i, rows.start, rows.length, cols.start, cols.length) for k, i in enumerate(node.input)
             if i in patches}
    relaid = {} if layout == NHWC else {k: len(shapes[i]) for k, i in enumerate(node.input) if i not in patches}
    attributes = {"axis": 3} if node.op_type == "Concat" else {}  # the channels of [B, rows, cols, C]
    return Step(node, reads, attributes, out, 0, relaid)


def _windowed(node, patches, shapes, dims) -> Step | None:
    """Conv, MaxPool, AveragePool: each output patch from its read-in context, the clean input (padded
    as the op pads it) with the input's patches pasted in; run without padding."""
    source = patches.get(node.input[0])
    in_dims = shapes.get(node.input[0])
    if source is None or source.layout != NCHW or any(i in patches for i in node.input[1:]) or in_dims is None:
        return None
    kernel = _attribute(node, "kernel_shape", None)
    if kernel is None and node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        kernel = None if weight is None else weight[2:]
    if kernel is None or len(kernel) != 2 or not all(isinstance(k, int) for k in kernel):
        return None
    if node.op_type == "AveragePool" and _attribute(node, "ceil_mode", 0):
        return None
    strides = _attribute(node, "strides", [1, 1])
    dilations = _attribute(node, "dilations", [1, 1])
    sizes_in, sizes_out = in_dims[2:], dims[2:]
    begins = _pads_begin(node, kernel, strides, dilations, sizes_in, sizes_out)
    if begins is None:
        return None
    if (node.op_type == "AveragePool" and any(begins) and not _attribute(node, "count_include_pad", 0)):
        return None  # the divisor would change at the borders
    axes, ends = [], []
    for old, k, s, d, pb, n_in, n_out in zip((source.rows, source.cols), kernel, strides, dilations, begins,
                                              sizes_in, sizes_out, strict=True):
        reach = (k - 1) * d
        new = span(n_out, -((reach - old.lo - pb) // s), (old.hi - 1 + pb) // s + 1)
        axes.append((new, new.start * s, (new.length - 1) * s + reach + 1))
        ends.append(max(0, (n_out - 1) * s + reach + 1 - n_in - pb))
    (rows, row_start, row_count), (cols, col_start, col_count) = axes
    fill = -np.inf if node.op_type == "MaxPool" else 0.0
    read = Read(node.input[0], row_start, row_count, col_start, col_count,
                (begins[0], ends[0], begins[1], ends[1]), fill)
    out = Patch(rows, cols, NCHW, dims[1])
    per_output = int(np.prod(kernel)) * (in_dims[1] // _attribute(node, "group", 1)) if node.op_type == "Conv" else 0
    attributes = {"pads": [0, 0, 0, 0], "auto_pad": None, "ceil_mode": None}  # None: dropped, to its default
    return Step(node, {0: read}, attributes, out, rows.length * cols.length * dims[1] * per_output)


def _transpose(node, source: Patch) -> Step | None:
    perm = _attribute(node, "perm", None)
    if perm is None or perm[0] != 0:
        return None
    layout = Layout(perm.index(source.layout.channel), perm.index(source.layout.height),
                    perm.index(source.layout.width))
    moved = Patch(source.rows, source.cols, layout, source.channels)
    return Step(node, {0: stored(node.input[0], source)}, {}, moved, 0)


def stored(tensor: str, patch: Patch) -> Read:
    """The read of exactly a tensor's stored patches."""
    return Read(tensor, patch.rows.start, patch.rows.length, patch.cols.start, patch.cols.length)


def _same_place(source: Patch, dims: list) -> Patch:
    return Patch(source.rows, source.cols, source.layout, dims[source.layout.channel])


def _pads_begin(node, kernel, strides, dilations, sizes_in, sizes_out) -> list[int] | None:
    """The padding before each spatial axis, explicit or from auto_pad."""
    auto = _attribute(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = _attribute(node, "pads", [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
        return list(pads[:2])
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    totals = [max(0, (o - 1) * s + (k - 1) * d + 1 - i)
              for k, s, d, i, o in zip(kernel, strides, dilations, sizes_in, sizes_out, strict=True)]
    return [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]


def _flat_over_map(dims: list | None, layout: Layout) -> bool:
    """Whether a constant operand broadcasts over the batch and the map (size 1 there, or absent)."""
    if dims is None or len(dims) > 4:
        return False
    padded = [1] * (4 - len(dims)) + list(dims)
    return all(padded[a] == 1 for a in (0, layout.height, layout.width))


def _attribute(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        return default
    value = onnx.helper.get_attribute_value(found)
    return value.decode() if isinstance(value, bytes) else list(value) if isinstance(value, (list, tuple)) else value


def _static(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Tensors that do not depend on the image: initializers and what is computed from them alone."""
    static = {t.name for t in graph.initializer} | {""}
    for node in nodes:
        if all(i in static for i in node.input) and not _has_subgraph(node):
            static.update(node.output)
    return static


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


@lru_cache(maxsize=8)
def _shapes(model: Classifier) -> dict[str, list]:
    """The inferred dims of every float tensor and initializer (ints, None where not fixed)."""
    inferred = inferred_graph(model)
    values = (*inferred.input, *inferred.value_info, *inferred.output)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in values if v.type.tensor_type.HasField("shape")
              and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    shapes.update({t.name: list(t.dims) for t in inferred.initializer})
    return shapes


def _elements(dims: list | None) -> int:
    """Elements of one image's tensor (0 when its shape is unknown)."""
    return int(np.prod(dims[1:])) if dims and all(isinstance(d, int) for d in dims[1:]) else 0


def _macs(node: onnx.NodeProto, shapes: dict) -> int:
    """Multiply-adds of one image through a Conv, Gemm or MatMul (0 for other ops and unknown shapes)."""
    out = shapes.get(node.output[0])
    if not out or not all(isinstance(d, int) for d in out[1:]):
        return 0
    per_image = int(np.prod(out[1:]))
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        return per_image * int(np.prod(weight[1:])) if weight and all(isinstance(d, int) for d in weight) else 0
    if node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        transposed = node.op_type == "Gemm" and _attribute(node, "transA", 0)
        inner = a[0 if transposed else -1] if a else None
        return per_image * inner if isinstance(inner, int) else 0
    return 0
