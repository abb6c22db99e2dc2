"""RISE (Petsiuk et al. 2018) as one ONNX graph around any classifier: random masks made in the graph
from a seed, the masked images run through the model a chunk at a time, the masks summed with their
scores as weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain.core.graph import OPSET, Builder, value
from onnx_explain.core.inputs import check_count, check_scalar
from onnx_explain.core.result import Explanation, Map
from onnx_explain.perturbation.batching import balanced_chunk, budget, chunk_loop, clipped_range
from onnx_explain.perturbation.classifier import Classifier, classifier
from onnx_explain.perturbation.dispatch import explain
from onnx_explain.perturbation.methods import Option, Outcome, Settings, method
from onnx_explain.perturbation.scoring import (
    check_score,
    image_inputs,
    image_scores,
    min_max,
    model_proto,
    perturbed_scores,
    pixel_masks,
    resolve_targets,
    run_built,
    score_outputs,
)

MIN_P = 1e-6


@method("rise", summary="RISE (Petsiuk et al. 2018): random masks weighted by the scores of the masked images",
        options=(Option("n_masks", int, 2000, "random masks per image (default 2000)"),
                 Option("cell", int, None, "mask cell size in pixels (default: a 7x7 grid)"),
                 Option("p", float, 0.5, "probability of keeping a cell (default 0.5)"),
                 Option("seed", int, 0, "mask seed: the same seed gives the same masks (default 0)")))
def run_rise(model: Classifier, images: np.ndarray, targets: np.ndarray, settings: Settings, *,
             n_masks: int, cell: int | None, p: float, seed: int) -> Outcome:
    """sum_i score(image * M_i) M_i / (n_masks * p); map raw [N, H, W] the saliency, heatmap raw scaled."""
    graph = dict(n_masks=n_masks, cell=cell, p=p, score=settings.score, batch_size=settings.batch_size)
    feeds = {"images": images, "targets": targets, "seed": check_scalar("seed", seed, "i")}
    out = run_built(rise_graph, model, graph, feeds, settings.providers)
    return Outcome(out["logits"], out["explained_targets"], Map("rise", None, out["heatmap"], out["raw"]))


def rise(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray, n_masks: int = 2000,
         cell: int | None = None, p: float = 0.5, seed: int = 0, *,
         targets: Sequence[int] | np.ndarray | int | None = None, score: str = "prob",
         batch_size: int | None = None, providers=None) -> Explanation:
    """RISE saliency of any ONNX classifier: explain(model, images, "rise", ...).

    sum_i score(image * M_i) M_i / (n_masks * p), where each mask is a random binary grid (cells kept
    with probability p) upsampled bilinearly to (grid + 1) cells and cropped at a random shift of less
    than one cell, as in the paper.

    Args:
        model: a path, an onnx.ModelProto or onnx_explain.classifier(...) (which also caches the session).
        images: float32 [N, C, H, W] or [N, H, W, C], as the model takes them.
        n_masks: masks per image (the paper uses 4000 for ImageNet models).
        cell: grid cell size in pixels; None: a 7 x 7 grid (cell = ceil(min(H, W) / 7)).
        p: probability that a cell is kept.  seed: the same seed gives the same masks.
        targets, score, batch_size, providers: as for onnx_explain.explain.

    Returns:
        Explanation whose ["rise"] map has raw [N, H, W], the saliency, and heatmap, raw scaled to [0, 1].
    """
    return explain(model, images, "rise", targets, score=score, batch_size=batch_size, providers=providers,
                   n_masks=n_masks, cell=cell, p=p, seed=seed)


def rise_graph(model: str | Path | onnx.ModelProto | Classifier, *, n_masks: int = 2000, cell: int | None = None,
               p: float = 0.5, seed: int = 0, score: str = "prob", batch_size: int | None = None) -> onnx.ModelProto:
    """The graph `rise` runs, to save and serve: inputs images, targets and seed (int64, optional:
    `seed` is its default); outputs scores, explained_targets, raw and heatmap.  The masks are a
    function of the seed alone."""
    model = classifier(model)
    check_score(score)
    height, width = model.size
    b = Builder()
    masks = _MaskMaker(b, (height, width), n_masks, cell, p, "seed")
    images, targets = "images", "targets"
    logits, base, _ = image_scores(b, model, score)
    explained = resolve_targets(b, base, targets)
    n = b.op("Gather", b.op("Shape", images), b.ints(0), axis=0)
    count = b.const(n_masks, "int64")
    trips, chunk = balanced_chunk(b, count, b.op("Squeeze", n, b.ints(0)), budget(model, batch_size))
    total = b.op("ConstantOfShape", b.op("Concat", n, b.ints(height * width), axis=0),
                 value=onnx.numpy_helper.from_array(np.zeros(1, np.float32)))

    def body(bb: Builder, i: str, carried: list[str]) -> tuple[list[str], list[str]]:
        rows, valid = clipped_range(bb, i, chunk, count)
        made = masks.make(bb, rows)  # [chunk, H, W]
        masked = bb.op("Mul", bb.op("Unsqueeze", images, bb.ints(0)), pixel_masks(bb, model, made))
        scores = perturbed_scores(bb, model, masked, n, explained, score)  # [chunk, N]
        weights = bb.op("Mul", scores, bb.op("Unsqueeze", valid, bb.ints(1)))  # padding rows weigh 0
        flat = bb.op("Reshape", made, bb.ints(-1, height * width))
        return [bb.op("Add", carried[0], bb.op("MatMul", bb.op("Transpose", weights, perm=[1, 0]), flat))], []

    total, = chunk_loop(b, trips, body, [total], [])
    raw = b.op("Reshape", b.op("Mul", total, b.const(1.0 / (n_masks * p))), b.ints(-1, height, width))
    float_, size = onnx.TensorProto.FLOAT, ["N", height, width]
    outputs = [*score_outputs(b, model, logits, base, explained), value(b.named(raw, "raw"), float_, size),
               value(b.named(min_max(b, raw), "heatmap"), float_, size)]
    proto = model_proto(b, model, [*image_inputs(model), value("seed", onnx.TensorProto.INT64, [])], outputs, "rise")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(check_scalar("seed", seed, "i"), "seed"))  # a default
    return proto


def rise_masks(size: Sequence[int], n_masks: int = 2000, cell: int | None = None, p: float = 0.5,
               seed: int = 0) -> np.ndarray:
    """The masks [n_masks, H, W] that `rise` draws for images of `size` (H, W) with these settings."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be (H, W), two integers >= 1, got {size!r}")
    size = tuple(check_count("size", s) for s in size)
    b = Builder()
    masks = _MaskMaker(b, size, n_masks, cell, p, b.const(check_scalar("seed", seed, "i"), "int64"))
    out = b.named(masks.make(b, b.op("Range", b.const(0, "int64"), b.const(n_masks, "int64"), b.const(1, "int64"))),
                  "masks")
    graph = b.graph("rise_masks", [], [value(out, onnx.TensorProto.FLOAT, [n_masks, *size])])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]


class _MaskMaker:
    """The masks as a pure function of the seed and the mask index: `make` draws the grids and shifts of
    the given mask indices and builds each mask as two interpolation-matrix products, rows [H, g] @
    grid @ cols [g, W]."""

    def __init__(self, b: Builder, size: tuple[int, int], n_masks: int, cell: int | None, p: float, seed: str) -> None:
        check_count("n_masks", n_masks)
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) or not (
                MIN_P <= p <= 1):  # below MIN_P, 1 / (n_masks p) leaves float32's range
            raise ValueError(f"p (the probability of keeping a cell) must be in [{MIN_P}, 1], got {p!r}")
        cell = math.ceil(min(size) / 7) if cell is None else cell
        if isinstance(cell, (bool, np.bool_)) or not (isinstance(cell, (int, np.integer)) and 0 < cell <= min(size)):
            raise ValueError(f"cell must be a positive int no larger than the image {list(size)}, got {cell!r}")
        self.grid = [math.ceil(s / cell) for s in size]
        self.seed, self.p, self.cell = seed, p, cell
        self.tables = [b.const(_shifted_resize(s, g, cell)) for s, g in zip(size, self.grid, strict=True)]

    def make(self, b: Builder, rows: str) -> str:
        """The masks [chunk, H, W] of the mask indices `rows` [chunk]: only their grids and shifts are
        drawn, so memory follows the chunk, not n_masks."""
        cells = math.prod(self.grid)
        grids = _uniform(b, _element_indices(b, rows, cells), self.seed, stream=0)  # [chunk, cells]
        grids = b.op("Reshape", b.op("Cast", b.op("Less", grids, b.const(self.p)), to=onnx.TensorProto.FLOAT),
                     b.ints(-1, *self.grid))
        shifts = b.op("Floor", b.op("Mul", _uniform(b, _element_indices(b, rows, 2), self.seed, stream=1),
                                    b.const(self.cell)))
        shifts = b.op("Min", b.op("Cast", shifts, to=onnx.TensorProto.INT64), b.const(self.cell - 1, "int64"))
        along = [b.op("Gather", table, b.op("Squeeze", shift, b.ints(1)), axis=0)
                 for table, shift in zip(self.tables, b.op("Split", shifts, axis=1, num_outputs=2, outputs=2),
                                         strict=True)]  # [chunk, H, g], [chunk, W, g]
        return b.op("MatMul", b.op("MatMul", along[0], grids), b.op("Transpose", along[1], perm=[0, 2, 1]))


def _element_indices(b: Builder, rows: str, per_row: int) -> str:
    """int64 [chunk, per_row]: the flat indices of rows' elements in a [n, per_row] array."""
    return b.op("Add", b.op("Mul", b.op("Unsqueeze", rows, b.ints(1)), b.const(per_row, "int64")),
                b.const(np.arange(per_row), "int64"))


def _uniform(b: Builder, index: str, seed: str, stream: int) -> str:
    """Uniform float32 values in [0, 1], a hash of (element index, seed, stream): the same seed gives the
    same values in every run and session (ONNX RandomUniform reseeds only per session).  The hash is a
    31-bit add-shift-multiply mixer in int64 ops that cannot overflow, with no bitwise op (ONNX Runtime's
    CUDA provider has no kernels for them)."""
    modulus = b.const(2**31, "int64")
    start = b.op("Add", b.op("Mul", b.op("Mod", seed, modulus), b.const(0x9E3779B1, "int64")),
                 b.const(stream * 0x85EBCA6B, "int64"))
    h = b.op("Mod", b.op("Add", index, start), modulus)
    def mixed(h: str) -> str:  # h + (h >> 16), modulo 2^31
        return b.op("Mod", b.op("Add", h, b.op("Div", h, b.const(2**16, "int64"))), modulus)

    for _ in range(2):
        h = b.op("Mod", b.op("Mul", mixed(h), b.const(0x45D9F3B, "int64")), modulus)
    h = mixed(h)
    return b.op("Div", b.op("Cast", h, to=onnx.TensorProto.FLOAT), b.const(2.0**31))


def _shifted_resize(size: int, grid: int, cell: int) -> np.ndarray:
    """[cell, size, grid]: for each shift, the rows shift ... shift + size - 1 of the bilinear
    resize (half-pixel centres, edges clamped) of `grid` values to (grid + 1) * cell pixels."""
    up = (grid + 1) * cell
    source = np.clip((np.arange(up) + 0.5) * grid / up - 0.5, 0, grid - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, grid - 1)
    matrix = np.zeros((up, grid), np.float32)
    np.add.at(matrix, (np.arange(up), low), 1 - (source - low))
    np.add.at(matrix, (np.arange(up), high), source - low)
    return np.stack([matrix[s:s + size] for s in range(cell)])
