"""Incremental occlusion's graph (Krypton: Nakandala, Kumar and Papakonstantinou, SIGMOD 2019): a chunk
of windows runs the model's convolutional layers on patches only, as patches.py plans them, and the rest
of the model on full tensors.  Each trip of the loop takes a chunk of every block of blocks.py.

Every patch is kept as [windows x images, rows, cols, channels], window-major.  A read gathers, for each
window, the clean tensor's values on the rows and cols it needs with the tensor's patches pasted in: the
clean tensor (padded once, before the loop, channels last, flattened to [images x rows x cols,
channels]) and the chunk's patches are stacked, and one Gather picks from either, row by row of
channels.  Convolutions, pooling and batch norm take NCHW, so each is wrapped in a pair of Transposes,
which ONNX Runtime folds into the reorders of its blocked kernels; the Transpose back waits until
after the element-wise ops that follow (Relu), so that ONNX Runtime can still fuse them.  Everything is
plain ONNX, so it runs on every execution provider.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnx_explain.core.graph import Builder, inline
from onnx_explain.perturbation.batching import ceil_div, chunk_loop, clipped_range, fitting, leading_rows
from onnx_explain.perturbation.blocks import Plan
from onnx_explain.perturbation.classifier import Classifier
from onnx_explain.perturbation.patches import NCHW, NHWC, POINTWISE, Patch, Read, Region, Step, stored
from onnx_explain.perturbation.scoring import chunk_scores

CHANNELS_FIRST = {"Conv", "MaxPool", "AveragePool", "BatchNormalization"}  # ops that take [B, C, rows, cols]
FILL = "occlusion fill"  # the key of the baseline's full images among the clean tensors


def _paddings(regions: Sequence[Region]) -> list[tuple]:
    """Every (tensor, pads, fill) the chunks of any of `regions` read the clean tensors with."""
    reads = [(FILL, (0, 0, 0, 0), 0.0)]
    for region in regions:
        reads += [r.padding for s in region.steps for r in s.reads.values()]
        reads += [(t, (0, 0, 0, 0), 0.0) for t in region.frontier if not region.patches[t].full]
    return list(dict.fromkeys(reads))


def clean_reads(regions: Sequence[Region]) -> list[str]:
    """The model tensors whose clean values the chunks read (besides the image)."""
    image = regions[0].image
    return [t for t in dict.fromkeys(t for t, _, _ in _paddings(regions)) if t not in (image, FILL)]


def padded_sources(b: Builder, regions: Sequence[Region], clean: dict[str, str]) -> dict[tuple, str]:
    """Before the loops: each clean tensor as every read pads it, channels last, [N x rows x cols, C]."""
    patches = regions[0].patches  # every block patches the same tensors, laid out alike
    sources = {}
    for tensor, pads, fill in _paddings(regions):
        patch = patches[regions[0].image if tensor == FILL else tensor]
        layout = patch.layout
        channels_last = b.op("Transpose", clean[tensor], perm=[0, layout.height, layout.width, layout.channel])
        top, bottom, left, right = pads
        if any(pads):
            channels_last = b.op("Pad", channels_last, b.ints(0, top, left, 0, 0, bottom, right, 0),
                                 b.const(fill), mode="constant")
        sources[tensor, pads, fill] = b.op("Reshape", channels_last, b.ints(-1, patch.channels))
    return sources


def block_scores(b: Builder, model: Classifier, patched: Plan, sources: dict[tuple, str], n: str, explained: str,
                 score: str, images: int) -> str:
    """[windows, N]: the incremental plan.  Each trip takes a chunk of every block (as many trips for
    each), runs them on patches, and the rest of the model on their frontier tensors stacked; a trip
    takes the memory of `images` occluded images through the full model, or of one window of each
    block where that is more."""
    counts = [len(block.rows) * len(block.cols) for block in patched.blocks]
    fit = fitting(b, b.op("Squeeze", n, b.ints(0)), patched.windows_per_image(images))  # windows of N images
    fit = b.op("Min", fit, b.const(sum(counts), "int64"))
    trips = b.op("Gather", b.const(fewest_trips(counts), "int64"), fit)
    chunks = [ceil_div(b, b.const(count, "int64"), trips) for count in counts]

    def body(bb: Builder, i: str, _: list[str]) -> tuple[list[str], list[str]]:
        constants: dict[tuple, str] = {}
        frontiers = []
        for block, count, chunk in zip(patched.blocks, counts, chunks, strict=True):
            windows, _valid = clipped_range(bb, i, chunk, bb.const(count, "int64"))
            frontiers.append(PatchedChunk(bb, model, block.region, sources, windows, n, len(block.cols),
                                          constants).frontier())
        stacked = {t: bb.op("Concat", *(f[t] for f in frontiers), axis=0) for t in frontiers[0]}
        scores = chunk_scores(bb, model, stacked, n, explained, score)  # [chunks of every block, N]
        sizes = bb.op("Concat", *(bb.op("Unsqueeze", c, bb.ints(0)) for c in chunks), axis=0)
        return [], bb.op("Split", scores, sizes, axis=0, outputs=len(chunks)) if len(chunks) > 1 else [scores]

    per_block = chunk_loop(b, trips, body, [], [onnx.TensorProto.FLOAT] * len(counts))
    scores = [leading_rows(b, s, b.ints(c)) for s, c in zip(per_block, counts, strict=True)]
    order = np.concatenate([block.windows(patched.columns) for block in patched.blocks])
    return b.op("Gather", b.op("Concat", *scores, axis=0), b.const(np.argsort(order), "int64"))


def fewest_trips(counts: list[int]) -> np.ndarray:
    """[windows + 1]: for each number k of windows a trip may hold, the fewest trips whose chunks (a
    block of c windows in chunks of ceil(c / trips)) hold at most max(k, blocks) windows."""
    trips = np.arange(1, sum(counts) + 1)
    per_trip = sum(-(-c // trips) for c in counts)  # windows a trip holds, falling with the trips
    allowed = np.maximum(np.arange(sum(counts) + 1), len(counts))
    return np.searchsorted(-per_trip, -allowed) + 1


class PatchedChunk:
    """The nodes of one chunk of a block's windows, inside the occlusion loop's body; `constants` is the
    body's cache of the model's constants, which the blocks' chunks share."""

    def __init__(self, b: Builder, model: Classifier, region: Region, sources: dict[tuple, str], windows: str,
                 n: str, columns: int, constants: dict[tuple, str]) -> None:
        self.b, self.model, self.region, self.sources, self.constants = b, model, region, sources, constants
        per_window = b.op("Concat", b.op("Shape", windows), n, axis=0)  # [chunk, N]

        def spread(t: str, axis: int) -> str:  # [chunk] or [N] -> [chunk x N], window-major
            return b.op("Reshape", b.op("Expand", b.op("Unsqueeze", t, b.ints(axis)), per_window), b.ints(-1))

        self.row = spread(b.op("Div", windows, b.const(columns, "int64")), 1)
        self.col = spread(b.op("Mod", windows, b.const(columns, "int64")), 1)
        self.image = spread(b.op("Range", b.const(0, "int64"), b.op("Squeeze", n, b.ints(0)), b.const(1, "int64")), 0)
        self.batch = b.op("Range", b.const(0, "int64"), b.op("Squeeze", b.op("Shape", self.row), b.ints(0)),
                          b.const(1, "int64"))
        self.values: dict[str, str] = {}
        self.first: dict[str, str] = {}  # outputs of channels-first ops, [chunk x N, C, rows, cols]
        self.stacked: dict[tuple, str] = {}
        self.flat: dict[str, str] = {}

    def frontier(self) -> dict[str, str]:
        """The region's frontier tensors in full, [chunk x N, ...] in the model's layout, from which the
        rest of the model runs."""
        patch = self.region.patches[self.region.image]
        self.values[self.region.image] = self.read(stored(FILL, patch), patch, patched=False)
        for step in self.region.steps:
            self.run(step)
        return {t: self.written_back(t) for t in self.region.frontier}

    def run(self, step: Step) -> None:
        """One node of the model on the chunk's patches.  The output of a channels-first op (and of the
        element-wise ops after it) is kept channels first; `value` lays it out channels last where it
        is read.  ONNX Runtime fuses an activation into a convolution only where it follows directly."""
        b, node, out = self.b, step.node, step.node.output[0]
        source = node.input[0]
        first = node.op_type in CHANNELS_FIRST or (node.op_type in POINTWISE and source in self.first)
        inputs = []
        for k, name in enumerate(node.input):
            if k == 0 and first and source in self.first and step.reads[0].is_store_of(self.region.patches[source]):
                inputs.append(self.first[source])
            elif k in step.reads:
                read = self.read(step.reads[k], self.region.patches[name])
                inputs.append(b.op("Transpose", read, perm=[0, 3, 1, 2]) if k == 0 and first else read)
            else:
                inputs.append(self.constant(name, step.out.layout.to_internal, step.relaid[k]) if k in step.relaid
                              else self.constant(name))
        if node.op_type == "Transpose":
            self.values[out] = inputs[0]  # patches are [B, rows, cols, C] in every layout: only a relabelling
            return
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = inputs
        copy.output[:] = [b.fresh(node.op_type.lower())]
        copy.name = b.fresh(node.op_type)
        kept = [a for a in copy.attribute if a.name not in step.attributes]
        del copy.attribute[:]
        copy.attribute.extend(kept)
        copy.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in step.attributes.items() if v is not None)
        b.nodes.append(copy)
        if first:
            self.first[out] = copy.output[0]
        else:
            self.values[out] = copy.output[0]

    def value(self, tensor: str) -> str:
        """A tensor's patches, [chunk x N, rows, cols, C]."""
        if tensor not in self.values:
            self.values[tensor] = self.b.op("Transpose", self.first[tensor], perm=[0, 2, 3, 1])
        return self.values[tensor]

    def read(self, r: Read, patch: Patch, patched: bool = True) -> str:
        """[chunk x N, r.rows, r.cols, C]: the clean tensor on the read's rows and cols, with `patch`'s
        values pasted in when `patched`.  The positions of every window are tables built here, so a
        chunk only gathers its rows of them."""
        b = self.b
        if patched and r.is_store_of(patch):
            return self.value(r.tensor)
        source = self.sources[r.padding]
        top, bottom, left, right = r.pads
        height, width = patch.rows.size + top + bottom, patch.cols.size + left + right
        rows = r.row_start[:, None] + np.arange(r.rows)  # [row positions, rows] in the padded map
        cols = r.col_start[:, None] + np.arange(r.cols)
        image = b.op("Unsqueeze", b.op("Mul", self.image, b.const(height * width, "int64")), b.ints(1))
        index = _grid(b, b.op("Add", image, self._table(rows * width, self.row)), self._table(cols, self.col))
        if patched:
            in_rows = _within(rows - (patch.rows.start + top)[:, None], patch.rows.length) * patch.cols.length
            in_cols = _within(cols - (patch.cols.start + left)[:, None], patch.cols.length)
            in_patch = _grid(b, self._table(in_rows, self.row), self._table(in_cols, self.col))  # < 0: outside
            clean_rows = b.op("Gather", b.op("Shape", source), b.ints(0), axis=0)  # the patches follow them
            first = b.op("Add", clean_rows, b.op("Mul", self.batch, b.const(patch.rows.length * patch.cols.length,
                                                                            "int64")))
            at = b.op("Add", in_patch, b.op("Unsqueeze", first, b.ints(1, 2)))
            index = b.op("Where", b.op("GreaterOrEqual", in_patch, b.const(0, "int64")), at, index)
            source = self._stacked(r, source)
        return b.op("Gather", source, index, axis=0)

    def _table(self, table: np.ndarray, along: str) -> str:
        """The rows of a [positions, k] table for the chunk's windows: [B, k]."""
        return self.b.op("Gather", self.b.const(table, "int64"), along)

    def written_back(self, tensor: str) -> str:
        """A frontier tensor in full, in its own layout, for the rest of the model."""
        patch = self.region.patches[tensor]
        if patch.full and patch.layout == NCHW and tensor in self.first:
            return self.first[tensor]  # already as the model lays it out
        rows, cols = patch.rows, patch.cols
        whole = Read(tensor, np.zeros_like(rows.lo), rows.size, np.zeros_like(cols.lo), cols.size)
        full = self.value(tensor) if patch.full else self.read(whole, patch)
        if patch.layout == NHWC:
            return full
        return self.b.op("Transpose", full, perm=list(np.argsort(patch.layout.to_internal)))

    def constant(self, name: str, perm: list[int] | None = None, rank: int = 4) -> str:
        """A model tensor that does not depend on the image, copied into the loop body once; with
        `perm`, raised to rank 4 and transposed by it (a per-channel operand of a tensor not kept
        channels last, laid out as the patches are)."""
        if name == "":
            return ""
        key = name, None if perm is None else tuple(perm)
        if key not in self.constants:
            value, = inline(self.b, self.model.model.graph, {}, [name], self.b.fresh("constant"))
            if perm is not None:
                lifted = self.b.op("Unsqueeze", value, self.b.ints(*range(4 - rank))) if rank < 4 else value
                value = self.b.op("Transpose", lifted, perm=perm)
            self.constants[key] = value
        return self.constants[key]

    def _stacked(self, r: Read, source: str) -> str:
        """The padded clean tensor with the chunk's patches of the same tensor below it."""
        b = self.b
        if r.tensor not in self.flat:  # one copy of the patches however many paddings read them
            self.flat[r.tensor] = b.op("Reshape", self.value(r.tensor),
                                       b.ints(-1, self.region.patches[r.tensor].channels))
        if r.padding not in self.stacked:
            self.stacked[r.padding] = b.op("Concat", source, self.flat[r.tensor], axis=0)
        return self.stacked[r.padding]


def _grid(b: Builder, rows: str, cols: str) -> str:
    """[B, R] + [B, C] -> [B, R, C]"""
    return b.op("Add", b.op("Unsqueeze", rows, b.ints(2)), b.op("Unsqueeze", cols, b.ints(1)))


def _within(offsets: np.ndarray, length: int) -> np.ndarray:
    """Offsets into a patch of `length`, those outside it so negative that any sum with one stays so."""
    return np.where((offsets >= 0) & (offsets < length), offsets, -2**40)
