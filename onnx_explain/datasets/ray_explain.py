"""Explaining whole datasets on Ray Data: the same files, from one machine to a cluster of GPU nodes.

Images are read with Ray Data's own readers (a folder or glob of image files, or a Parquet table with an
image column: object-store URIs work as Ray supports them), decoded, resized and normalised as the
file's metadata says, and explained in an actor pool: one Explainer per actor, ONNX Runtime's threads
set to the actor's CPUs, the CUDA provider when the actor has a GPU.  A corrupt image becomes a row
with an error and empty maps; every input appears exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import ray

from onnx_explain.core.inputs import check_count
from onnx_explain.render.drawing import decode, overlay, save_png
from onnx_explain.render.localize import boxes
from onnx_explain.serving.service import Service

RESOLUTIONS = ("map", "input")
NO_BOX = np.full(4, -1, np.int64)


def explain_dataset(model_path: str | Path, source: str | Sequence[str], *, methods: Sequence[str] | None = None,
                    targets: int | None = None, batch_size: int = 16, concurrency: int = 1,
                    num_gpus_per_actor: float = 0, cpus_per_actor: float = 1, resolution: str = "map",
                    overlays: str | Path | None = None, image_column: str = "image") -> ray.data.Dataset:
    """A Ray Dataset of explanations, one row per input image (lazy: write it, or iterate it).

    Args:
        model_path: an exported file, or any ONNX classifier (explained with the pure-inference methods).
        source: a folder, a glob or a list of image files, or a Parquet file or folder (".parquet") whose
            `image_column` holds encoded images (bytes) and whose "path" column, if any, names them.
        methods: the methods to run (None: all of the file's, or every pure-inference method).
        targets: one class for every image, or None for each image's predicted class.
        batch_size: images per model run.
        concurrency: actors in the pool (each holds one ONNX Runtime session).
        num_gpus_per_actor: GPUs each actor reserves; above 0, the actor runs the CUDA provider.
        cpus_per_actor: CPUs each actor reserves, and ONNX Runtime's threads in it; the pool must leave at
            least one CPU of the cluster to the reading and decoding tasks.
        resolution: "map", heatmaps at the model's input size, or "input", resized to each image's own.
        overlays: a folder for PNG overlays "<image stem>.<method>.png" (on a cluster, a shared one).
        image_column: the image column of a Parquet source.

    Returns:
        A Dataset with columns path, error ("" when the image was explained), predicted (-1 on error),
        probability (NaN on error), target (-1 on error), and per map "<method>.heatmap" (float16 [h, w],
        [0, 0] on error) and "<method>.box" (int64 x0, y0, x1, y1; -1s on error).

    Raises:
        ValueError: a bad setting, a pool that leaves no CPU to read with, or a model that cannot be read.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    check_count("batch_size", batch_size)
    check_count("concurrency", concurrency)
    if targets is not None:
        check_count("targets", targets, low=0)
    _check_room(concurrency, cpus_per_actor)
    probe = Service(model_path)  # fails here, with its message, rather than in every actor
    chosen = list(methods) if methods else list(probe.methods)
    probe.explain_images(np.zeros((1, *_input_shape(probe)), np.float32), chosen)  # the methods and options work
    dataset = _read(source, image_column)
    return dataset.map_batches(
        _Explain, fn_constructor_kwargs=dict(model_path=str(model_path), methods=chosen, targets=targets,
                                             resolution=resolution, overlays=str(overlays) if overlays else None,
                                             gpu=num_gpus_per_actor > 0, threads=max(1, int(cpus_per_actor))),
        batch_size=batch_size, batch_format="numpy", concurrency=concurrency, num_gpus=num_gpus_per_actor,
        num_cpus=cpus_per_actor, max_restarts=-1, max_task_retries=-1)


def _check_room(concurrency: int, cpus_per_actor: float) -> None:
    """The pool must leave a CPU to the tasks that read and decode, or the pipeline waits forever."""
    if not ray.is_initialized():
        return  # Ray starts on first use, with every CPU of this machine
    cpus = ray.cluster_resources().get("CPU", 0)
    if concurrency * cpus_per_actor > cpus - 1:
        raise ValueError(f"{concurrency} actors of {cpus_per_actor} CPUs leave no CPU of the cluster's {cpus:g} to "
                         "read and decode the images: lower concurrency or cpus_per_actor")


def _read(source: str | Sequence[str], image_column: str) -> ray.data.Dataset:
    """(path, image bytes) rows from Ray Data's readers."""
    paths = [source] if isinstance(source, (str, Path)) else list(source)
    if not paths or not all(isinstance(p, (str, Path)) for p in paths):
        raise ValueError(f"source must be a folder, a glob, a Parquet path or a list of files, got {source!r}")
    paths = [str(p) for p in paths]
    if all(p.rstrip("/").endswith(".parquet") for p in paths):
        table = ray.data.read_parquet(paths)
        columns = table.columns()
        if image_column not in columns:
            raise ValueError(f"the Parquet source has no {image_column!r} column; its columns are {columns}")
        named = "path" in columns
        return table.map_batches(lambda b: {"path": b["path"] if named else np.array([f"row {i}" for i in range(
            len(b[image_column]))]), "bytes": b[image_column]}, batch_format="numpy")
    return ray.data.read_binary_files(paths, include_paths=True)


def _input_shape(service: Service) -> tuple[int, ...]:
    return service.explainer.info.input_shape if service.explainer else service.model.image_shape


class _Explain:
    """One actor of the pool: a Service (an Explainer, or a classifier for the pure-inference methods)."""

    def __init__(self, model_path: str, methods: list[str], targets: int | None, resolution: str,
                 overlays: str | None, gpu: bool, threads: int) -> None:
        self.service = Service(model_path, providers=["cuda", "cpu"] if gpu else "cpu", threads=threads)
        self.methods, self.targets, self.resolution = methods, targets, resolution
        self.overlays = Path(overlays) if overlays else None
        probe = self.service.explain_images(np.zeros((1, *_input_shape(self.service)), np.float32), methods)
        # every batch has the same columns, an all-corrupt one too
        self.keys = [method if layer is None else f"{method}@{layer}" for method, layer in probe.maps]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        rows = [self._prepared(blob, path) for blob, path in zip(batch["bytes"], paths, strict=True)]
        good = [i for i, row in enumerate(rows) if "error" not in row]
        found = {}
        if good:
            try:
                result = self.service.explain_images(np.stack([rows[i]["x"] for i in good]), self.methods,
                                                     self.targets)
                found = {i: (result, k) for k, i in enumerate(good)}
            except ValueError as e:  # a whole batch the model cannot run: every row says why
                for i in good:
                    rows[i] = {"error": str(e)}
        return self._columns(paths, rows, found)

    def _prepared(self, blob: object, path: str) -> dict:
        try:
            data = bytes(blob)
            shown, x = self.service.prepare(data, path)
            original = decode(data, path).shape[:2] if self.resolution == "input" else None
            return {"shown": shown, "x": x, "size": original}
        except (ValueError, TypeError) as e:
            return {"error": str(e)}

    def _columns(self, paths: list[str], rows: list[dict], found: dict) -> dict[str, np.ndarray]:
        n = len(rows)
        columns = {"path": np.array(paths), "error": np.array([row.get("error", "") for row in rows]),
                   "predicted": np.full(n, -1, np.int64), "probability": np.full(n, np.nan, np.float32),
                   "target": np.full(n, -1, np.int64)}
        heatmaps = {key: [np.zeros((0, 0), np.float16)] * n for key in self.keys}
        boxes_ = {key: [NO_BOX] * n for key in self.keys}
        for i, row in enumerate(rows):
            if i not in found:
                continue
            result, k = found[i]
            logits = result.logits[k].astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            columns["predicted"][i] = int(np.argmax(logits))
            columns["probability"][i] = probabilities.max()
            columns["target"][i] = int(np.ravel(result.targets[k])[0])
            for (method, layer), m in result.maps.items():
                key = method if layer is None else f"{method}@{layer}"
                heatmap = _at(m.heatmap[k], row["size"])
                heatmaps[key][i] = heatmap.astype(np.float16)
                boxes_[key][i] = boxes(heatmap, threshold=0.5)
                if self.overlays is not None:
                    save_png(self.overlays / f"{Path(paths[i]).stem}.{key}.png", overlay(row["shown"], m.heatmap[k]))
        for key in heatmaps:
            columns[f"{key}.heatmap"] = _objects(heatmaps[key])
            columns[f"{key}.box"] = np.stack(boxes_[key])
        return columns


def _at(heatmap: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return heatmap if size is None else cv2.resize(heatmap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _objects(arrays: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column
