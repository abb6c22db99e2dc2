"""`onnx-explain explain-dataset`: a folder, glob or Parquet table of images explained on Ray Data into a
Parquet table (the `ray` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub) -> None:
    ds = sub.add_parser("explain-dataset", help="explain a whole dataset on Ray Data into Parquet (needs "
                                                "onnx-explain[ray])")
    ds.add_argument("model", type=Path, help="an exported .onnx file, or any ONNX classifier")
    ds.add_argument("source", help="a folder or glob of images, or a Parquet table with an image column")
    ds.add_argument("out", help="the Parquet folder to write, one row per input image")
    ds.add_argument("--methods", nargs="+", default=None, help="methods to run (default: all of the file's)")
    ds.add_argument("--target", type=int, default=None, help="one class for every image (default: the predicted)")
    ds.add_argument("--address", default=None,
                    help="a Ray cluster to join ('auto': the one this machine belongs to; default: a local Ray)")
    ds.add_argument("--concurrency", type=int, default=1, help="actors in the pool (default 1)")
    ds.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs each actor reserves (default 0)")
    ds.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs each actor reserves and uses (default 1)")
    ds.add_argument("--batch-size", type=int, default=16, help="images per model run (default 16)")
    ds.add_argument("--resolution", choices=["map", "input"], default="map",
                    help="heatmaps at the model's input size (map) or each image's own (input); default map")
    ds.add_argument("--image-column", default="image", help="the image column of a Parquet source")
    ds.add_argument("--overlays", type=Path, default=None, help="a folder for PNG overlays")


def explain_dataset(args: argparse.Namespace) -> None:
    try:
        import pyarrow.parquet as pq
        import ray

        from onnx_explain.datasets.ray_explain import explain_dataset as explain
    except ImportError as e:
        raise ImportError(f"`onnx-explain explain-dataset` needs the ray extra: pip install 'onnx-explain[ray]' "
                          f"({e})") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address, log_to_driver=False, include_dashboard=False)
    try:
        dataset = explain(args.model, args.source, methods=args.methods, targets=args.target,
                          batch_size=args.batch_size, concurrency=args.concurrency,
                          num_gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                          resolution=args.resolution, overlays=args.overlays, image_column=args.image_column)
        dataset.write_parquet(args.out)
    finally:
        if started:
            ray.shutdown()
    errors = pq.read_table(args.out, columns=["error"]).column("error").to_pylist()
    failed = sum(bool(e) for e in errors)
    print(f"wrote {len(errors)} rows to {args.out}: {len(errors) - failed} explained, {failed} with an error")
