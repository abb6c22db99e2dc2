"""The window grid of incremental occlusion in blocks whose windows share patch sizes.

A chunk of windows stacks their patches into one tensor, as long as the longest of them.  Near the
image's borders a window's changed rectangle is clipped, and layer after layer its patches stay
shorter than in the middle, where the deepest patched layers are covered whole (docs/performance.md,
"Blocks").  So along each axis the window positions fall into a few classes whose patches have about
the same lengths; each pair of a row class and a column class is a block, planned on its own
(patches.Region).  Each trip of the occlusion loop runs a chunk of every block on its patches, and
their full tensors at the region's end through the rest of the model as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from onnx_explain.perturbation.classifier import Classifier
from onnx_explain.perturbation.patches import Region, Span, region, window_starts

# Classes per axis: each pair of classes is one more copy of the patched layers in the loop body, and
# past three the FLOPs saved are small (docs/performance.md).
CLASSES_PER_AXIS = 3


@dataclass(frozen=True, eq=False)
class Block:
    """The windows at the row positions `rows` x the column positions `cols` (indices along each
    axis of the grid), and their plan."""

    rows: np.ndarray
    cols: np.ndarray
    region: Region

    def windows(self, columns: int) -> np.ndarray:
        """The block's windows in the grid's row-major numbering, row by row of the block."""
        return (self.rows[:, None] * columns + self.cols[None, :]).ravel()


@dataclass(frozen=True)
class Plan:
    """Incremental occlusion's plan for a window grid: its blocks, and the grid's columns."""

    blocks: tuple[Block, ...]
    columns: int

    @property
    def patched(self) -> bool:
        """Whether any block runs a layer on patches."""
        return any(block.region.steps for block in self.blocks)

    @property
    def flop_ratio(self) -> float:
        """Incremental FLOPs / full FLOPs, over all windows."""
        counts = [len(block.rows) * len(block.cols) for block in self.blocks]
        incremental = sum(c * block.region.incremental_macs for c, block in zip(counts, self.blocks, strict=True))
        return incremental / max(sum(counts) * self.blocks[0].region.full_macs, 1)

    @property
    def regions(self) -> list[Region]:
        return [block.region for block in self.blocks]

    def windows_per_image(self, images: int) -> int:
        """Windows of any blocks that, run together, take the memory of `images` occluded images
        through the full model."""
        return min(block.region.windows_per_image(images) for block in self.blocks)


@lru_cache(maxsize=8)
def plan(model: Classifier, outputs: tuple[str, ...], window: tuple[int, int], stride: tuple[int, int]) -> Plan:
    """The blocks of the windows `window` moved by `stride` (captum's positions), computing `outputs`.
    Every block runs the same nodes on patches as the whole grid would (so their frontier tensors
    stack into one batch for the rest of the model); near the borders, on shorter patches."""
    rows, cols = (tuple(int(v) for v in window_starts(size, w, s))
                  for size, w, s in zip(model.size, window, stride, strict=True))
    whole = region(model, outputs, window, rows, cols)
    within = frozenset(s.node.output[0] for s in whole.steps)
    conv = [s for s in whole.steps if s.macs]
    row_classes = position_classes(*_lengths([s.out.rows for s in conv], [s.macs for s in conv], len(rows)))
    col_classes = position_classes(*_lengths([s.out.cols for s in conv], [s.macs for s in conv], len(cols)))
    blocks = tuple(Block(r, c, region(model, outputs, window, tuple(rows[i] for i in r), tuple(cols[i] for i in c),
                                      within))
                   for r in row_classes for c in col_classes)
    return Plan(blocks, len(cols))


def _lengths(spans: list[Span], macs: list[int], positions: int) -> tuple[np.ndarray, np.ndarray]:
    """[positions, layers] changed lengths along one axis, and each layer's multiply-adds per unit of
    its stored length."""
    lengths = np.array([s.hi - s.lo for s in spans]).T.reshape(positions, len(spans))
    return lengths, np.array([m / s.length for s, m in zip(spans, macs, strict=True)])


def position_classes(lengths: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """Positions [positions, layers] of patch lengths into at most CLASSES_PER_AXIS classes, taking the
    fewest multiply-adds when each class computes its longest patch at every layer (`weights`: per
    unit of length), among the classes that are runs of the positions ordered by their own cost (an
    exact dynamic programme over the cut points)."""
    order = np.lexsort((*lengths.T[::-1], lengths @ weights))  # by cost, equal positions side by side
    n = len(order)
    cost = np.full((n + 1, n + 1), np.inf)  # cost[i, j]: order[i:j] as one class
    for i in range(n):
        longest = np.zeros(lengths.shape[1])
        for j in range(i + 1, n + 1):
            longest = np.maximum(longest, lengths[order[j - 1]])
            cost[i, j] = (j - i) * float(longest @ weights)
    classes = min(CLASSES_PER_AXIS, len({tuple(r) for r in lengths}))
    best, cut = np.full((classes + 1, n + 1), np.inf), np.zeros((classes + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, classes + 1):
        for j in range(1, n + 1):
            options = best[k - 1, :j] + cost[:j, j]
            cut[k, j] = int(np.argmin(options))
            best[k, j] = options[cut[k, j]]
    bounds, j = [], n
    for k in range(classes, 0, -1):
        bounds.append((cut[k, j], j))
        j = cut[k, j]
    return [np.sort(order[i:j]) for i, j in reversed(bounds)]
