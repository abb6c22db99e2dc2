"""Running a user's model inside a graph on batches of any size, in chunks that bound memory.

`run_model` inlines the model once for a batch; a model whose batch size is fixed in the file runs in
an inner Loop over padded slices of that size.  `chunk_loop` is the outer Loop the methods use to walk
through their perturbations a chunk at a time, with running sums carried and per-chunk results stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from onnx import TensorProto

from onnx_explain.core.graph import Builder, inline, value
from onnx_explain.core.inputs import check_count
from onnx_explain.perturbation.classifier import Classifier

DEFAULT_BATCH = 32  # images per model run: a bound on memory, and enough to keep the CPU kernels busy

BodyFn = Callable[[Builder, str, list[str]], tuple[list[str], list[str]]]


def run_model(b: Builder, model: Classifier, bindings: Mapping[str, str], outputs: Sequence[str]) -> list[str]:
    """The model's `outputs` for a batch bound to its image input (or, to cut the model, to inner
    tensors); every bound tensor has the batch on axis 0."""
    graph = model.model.graph
    if model.batch is None:
        return inline(b, graph, bindings, outputs, b.fresh("model"))
    size = model.batch
    first = next(iter(bindings.values()))
    count = b.op("Squeeze", b.op("Slice", b.op("Shape", first), b.ints(0), b.ints(1)), b.ints(0))
    trips = ceil_div(b, count, b.const(size, "int64"))

    def body(bb: Builder, i: str, _: list[str]) -> tuple[list[str], list[str]]:
        rows, _valid = clipped_range(bb, i, bb.const(size, "int64"), count)
        sliced = {name: bb.op("Gather", t, rows, axis=0) for name, t in bindings.items()}
        return [], inline(bb, graph, sliced, outputs, bb.fresh("model"))

    stacked = chunk_loop(b, trips, body, [], [TensorProto.FLOAT] * len(outputs))
    return [leading_rows(b, s, b.op("Unsqueeze", count, b.ints(0))) for s in stacked]


def chunk_loop(b: Builder, trips: str, body: BodyFn, carried: Sequence[str],
               scan_types: Sequence[int]) -> list[str]:
    """An ONNX Loop run `trips` times: body(builder, i, carried values) returns (new carried values,
    per-trip outputs).  Returns the final carried values, then each per-trip output stacked on a new
    axis 0.  Carried values are float32."""
    bb = b.child()
    i, cond = bb.fresh("i"), bb.fresh("cond")
    ins = [bb.fresh("carried") for _ in carried]
    new, scans = body(bb, i, ins)
    cond_out = bb.op("Identity", cond)
    outs = [bb.op("Identity", t) for t in (*new, *scans)]
    graph = bb.graph(
        bb.fresh("body"),
        [value(i, TensorProto.INT64, []), value(cond, TensorProto.BOOL, []),
         *(value(n, TensorProto.FLOAT, None) for n in ins)],
        [value(cond_out, TensorProto.BOOL, []),
         *(value(n, t, None) for n, t in zip(outs, [TensorProto.FLOAT] * len(new) + list(scan_types), strict=True))])
    count = len(carried) + len(scan_types)
    results = b.op("Loop", trips, "", *carried, outputs=count, body=graph)
    return [results] if count == 1 else results


def ceil_div(b: Builder, a: str, d: str) -> str:
    one = b.const(1, "int64")
    return b.op("Div", b.op("Sub", b.op("Add", a, d), one), d)


def clipped_range(b: Builder, i: str, size: str, count: str) -> tuple[str, str]:
    """Indices i*size ... i*size + size - 1, the ones past count - 1 clamped to it (padding by repeats),
    and float32 [size]: 1 where the index was in range, 0 for the padding."""
    start = b.op("Mul", i, size)
    rows = b.op("Range", start, b.op("Add", start, size), b.const(1, "int64"))
    valid = b.op("Cast", b.op("Less", rows, count), to=TensorProto.FLOAT)
    return b.op("Min", rows, b.op("Sub", count, b.const(1, "int64"))), valid


def budget(model: Classifier, batch_size: int | None) -> int:
    """Images per model run: the caller's, else the model's fixed batch, else DEFAULT_BATCH."""
    return check_count("batch_size", batch_size) if batch_size is not None else model.batch or DEFAULT_BATCH


def balanced_chunk(b: Builder, total: str, per_item: str, budget: int) -> tuple[str, str]:
    """(trips, chunk): `total` things in equal chunks, each chunk times `per_item` images within
    `budget` images when it can be (at least one thing per chunk), the last chunk padded least."""
    trips = ceil_div(b, total, fitting(b, per_item, budget))
    return trips, ceil_div(b, total, trips)


def fitting(b: Builder, per_item: str, budget: int) -> str:
    """How many things of `per_item` images each fit in `budget` images (at least one)."""
    return b.op("Max", b.op("Div", b.const(budget, "int64"), per_item), b.const(1, "int64"))


def leading_rows(b: Builder, stacked: str, end: str) -> str:
    """A Loop's stacked per-trip outputs [trips, chunk, ...] as [trips x chunk, ...], cut to rows [0, end)
    (the last chunk's padding dropped); `end` is int64 [1]."""
    return b.op("Slice", merge_leading(b, stacked), b.ints(0), end)


def merge_leading(b: Builder, t: str) -> str:
    """[a, b, ...] -> [a * b, ...]"""
    shape = b.op("Shape", t)
    rest = b.op("Slice", shape, b.ints(2), b.ints(2**62))
    return b.op("Reshape", t, b.op("Concat", b.ints(-1), rest, axis=0))

