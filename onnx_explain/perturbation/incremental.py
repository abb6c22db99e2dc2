"""Incremental occlusion's graph (Krypton: Nakandala, Kumar and Papakonstantinou, SIGMOD 2019): a chunk
of windows runs the model's convolutional layers on patches only, as patches.py plans them, and the rest
of the model on full tensors.

Every patch is kept as [windows x images, channels, rows, cols], window-major.  A read gathers, for each
window, the clean tensor's values on the rows and cols it needs with the tensor's patches pasted in: the
clean tensor (padded once, before the loop, channels last, flattened to [images x rows x cols,
channels]) and the chunk's patches are stacked, and one Gather picks from either, row by row of
channels.  Everything is plain ONNX, so it runs on every execution provider.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_explain.core.graph import Builder, inline
from onnx_explain.perturbation.classifier import Classifier
from onnx_explain.perturbation.patches import BROADCAST, NCHW, Patch, Read, Region, Step
from onnx_explain.perturbation.scoring import chunk_scores

FILL = "occlusion fill"  # the key of the baseline's full images among the clean tensors


def _paddings(region: Region) -> list[tuple]:
    """Every (tensor, pads, fill) a chunk reads the clean tensors with."""
    reads = [r.padding for s in region.steps for r in s.reads.values()]
    reads += [(t, (0, 0, 0, 0), 0.0) for t in region.frontier if not region.patches[t].full]
    return list(dict.fromkeys([(FILL, (0, 0, 0, 0), 0.0), *reads]))


def clean_reads(region: Region) -> list[str]:
    """The model tensors whose clean values the chunks read (besides the image)."""
    image = next(iter(region.patches))
    return [t for t in dict.fromkeys(t for t, _, _ in _paddings(region)) if t not in (image, FILL)]


def padded_sources(b: Builder, region: Region, clean: dict[str, str]) -> dict[tuple, str]:
    """Before the loop: each clean tensor as every read pads it, channels last, [N x rows x cols, C]."""
    image = next(iter(region.patches))
    sources = {}
    for tensor, pads, fill in _paddings(region):
        layout = region.patches[image if tensor == FILL else tensor].layout
        channels_last = b.op("Transpose", clean[tensor], perm=[0, layout.height, layout.width, layout.channel])
        top, bottom, left, right = pads
        if any(pads):
            channels_last = b.op("Pad", channels_last, b.ints(0, top, left, 0, 0, bottom, right, 0),
                                 b.const(fill), mode="constant")
        channels = region.patches[image if tensor == FILL else tensor].channels
        sources[tensor, pads, fill] = b.op("Reshape", channels_last, b.ints(-1, channels))
    return sources


class PatchedChunk:
    """The nodes of one chunk of windows, inside the occlusion loop's body."""

    def __init__(self, b: Builder, model: Classifier, region: Region, sources: dict[tuple, str], windows: str,
                 n: str, columns: int) -> None:
        self.b, self.model, self.region, self.sources = b, model, region, sources
        per_window = b.op("Concat", b.op("Shape", windows), n, axis=0)  # [chunk, N]

        def spread(t: str, axis: int) -> str:  # [chunk] or [N] -> [chunk x N], window-major
            return b.op("Reshape", b.op("Expand", b.op("Unsqueeze", t, b.ints(axis)), per_window), b.ints(-1))

        self.row = spread(b.op("Div", windows, b.const(columns, "int64")), 1)
        self.col = spread(b.op("Mod", windows, b.const(columns, "int64")), 1)
        self.image = spread(b.op("Range", b.const(0, "int64"), b.op("Squeeze", n, b.ints(0)), b.const(1, "int64")), 0)
        self.batch = b.op("Range", b.const(0, "int64"), b.op("Squeeze", b.op("Shape", self.row), b.ints(0)),
                          b.const(1, "int64"))
        self.values: dict[str, str] = {}
        self.stacked: dict[tuple, str] = {}
        self.constants: dict[str, str] = {}

    def scores(self, targets: str, score: str, n: str) -> str:
        """Target scores [chunk, N] of the chunk's occluded images."""
        image = next(iter(self.region.patches))
        patch = self.region.patches[image]
        stored = Read(FILL, patch.rows.start, patch.rows.length, patch.cols.start, patch.cols.length)
        self.values[image] = self.read(stored, patch, patched=False)
        for step in self.region.steps:
            self.values[step.node.output[0]] = self.run(step)
        bindings = {t: self.written_back(t) for t in self.region.frontier}
        return chunk_scores(self.b, self.model, bindings, n, targets, score)

    def run(self, step: Step) -> str:
        """One node of the model on the chunk's patches."""
        b, node = self.b, step.node
        inputs = []
        for k, name in enumerate(node.input):
            if k in step.reads:
                inputs.append(self.read(step.reads[k], self.region.patches[name]))
            else:
                inputs.append(self.constant(name, step.out if k and node.op_type in BROADCAST else None))
        if node.op_type == "Transpose":
            return inputs[0]  # patches are [B, C, rows, cols] in every layout; the step only relabels axes
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
        return copy.output[0]

    def read(self, r: Read, patch: Patch, patched: bool = True) -> str:
        """[chunk x N, C, r.rows, r.cols]: the clean tensor on the read's rows and cols, with `patch`'s
        values pasted in when `patched`."""
        b = self.b
        if patched and r.is_store_of(patch):
            return self.values[r.tensor]
        source = self.sources[r.padding]
        rows = self._positions(r.row_start, r.rows, self.row)  # [B, rows] in the padded map
        cols = self._positions(r.col_start, r.cols, self.col)
        height, width = self._padded_size(r, patch)
        image = b.op("Unsqueeze", b.op("Mul", self.image, b.const(height * width, "int64")), b.ints(1))
        index = _grid(b, b.op("Add", image, b.op("Mul", rows, b.const(width, "int64"))), cols)
        if patched:
            top, left = r.pads[0], r.pads[2]
            inside_rows = b.op("Sub", rows, b.op("Unsqueeze", b.op("Gather", b.const(patch.rows.start + top, "int64"),
                                                                   self.row), b.ints(1)))
            inside_cols = b.op("Sub", cols, b.op("Unsqueeze", b.op("Gather", b.const(patch.cols.start + left, "int64"),
                                                                   self.col), b.ints(1)))
            inside = b.op("And", b.op("Unsqueeze", _within(b, inside_rows, patch.rows.length), b.ints(2)),
                          b.op("Unsqueeze", _within(b, inside_cols, patch.cols.length), b.ints(1)))
            first = b.op("Gather", b.op("Shape", source), b.ints(0), axis=0)
            offset = b.op("Add", first, b.op("Mul", self.batch, b.const(patch.rows.length * patch.cols.length, "int64")))
            in_patch = _grid(b, b.op("Add", b.op("Unsqueeze", offset, b.ints(1)),
                                     b.op("Mul", inside_rows, b.const(patch.cols.length, "int64"))), inside_cols)
            index = b.op("Where", inside, in_patch, index)
            source = self._stacked(r, source)
        return b.op("Transpose", b.op("Gather", source, index, axis=0), perm=[0, 3, 1, 2])

    def written_back(self, tensor: str) -> str:
        """A frontier tensor in full, in its own layout, for the rest of the model."""
        patch = self.region.patches[tensor]
        whole = Read(tensor, np.zeros_like(patch.rows.lo), patch.rows.size, np.zeros_like(patch.cols.lo), patch.cols.size)
        full = self.values[tensor] if patch.full else self.read(whole, patch)
        if patch.layout == NCHW:
            return full
        return self.b.op("Transpose", full, perm=list(np.argsort(patch.layout.to_internal)))

    def constant(self, name: str, broadcast_to: Patch | None) -> str:
        """A model tensor that does not depend on the image, copied into the loop body once; an operand
        broadcast against patches of another layout is laid out as the patches are."""
        if name == "":
            return ""
        key = name if broadcast_to is None or broadcast_to.layout == NCHW else f"{name} as {broadcast_to.layout}"
        if key not in self.constants:
            value, = inline(self.b, self.model.model.graph, {}, [name], self.b.fresh("constant"))
            if key != name:
                rank = self.b.op("Size", self.b.op("Shape", value))
                ones = self.b.op("Expand", self.b.ints(1), self.b.op("Sub", self.b.ints(4), self.b.op("Reshape", rank,
                                                                                                     self.b.ints(1))))
                lifted = self.b.op("Reshape", value, self.b.op("Concat", ones, self.b.op("Shape", value), axis=0))
                value = self.b.op("Transpose", lifted, perm=broadcast_to.layout.to_internal)
            self.constants[key] = value
        return self.constants[key]

    def _positions(self, starts: np.ndarray, count: int, along: str) -> str:
        b = self.b
        first = b.op("Gather", b.const(starts, "int64"), along)
        return b.op("Add", b.op("Unsqueeze", first, b.ints(1)), b.const(np.arange(count), "int64"))

    def _padded_size(self, r: Read, patch: Patch) -> tuple[int, int]:
        top, bottom, left, right = r.pads
        return patch.rows.size + top + bottom, patch.cols.size + left + right

    def _stacked(self, r: Read, source: str) -> str:
        """The padded clean tensor with the chunk's patches of the same tensor below it."""
        if r.padding not in self.stacked:
            b = self.b
            patches = b.op("Transpose", self.values[r.tensor], perm=[0, 2, 3, 1])
            channels = b.op("Slice", b.op("Shape", patches), b.ints(3), b.ints(4))
            flat = b.op("Reshape", patches, b.op("Concat", b.ints(-1), channels, axis=0))
            self.stacked[r.padding] = b.op("Concat", source, flat, axis=0)
        return self.stacked[r.padding]


def _grid(b: Builder, rows: str, cols: str) -> str:
    """[B, R] + [B, C] -> [B, R, C]"""
    return b.op("Add", b.op("Unsqueeze", rows, b.ints(2)), b.op("Unsqueeze", cols, b.ints(1)))


def _within(b: Builder, t: str, length: int) -> str:
    return b.op("And", b.op("GreaterOrEqual", t, b.const(0, "int64")), b.op("Less", t, b.const(length, "int64")))
