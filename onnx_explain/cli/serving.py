"""Command-line subcommands for serving: `triton` writes a Triton model repository, `serve` runs the
KServe ModelServer of onnx_explain.serving.server (the `serve` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_explain.serving.triton import write_repository


def add_parsers(sub) -> None:
    tri = sub.add_parser("triton", help="write a Triton Inference Server model repository for an exported file")
    tri.add_argument("model", type=Path, help="an .onnx file written by `onnx-explain export`")
    tri.add_argument("repository", type=Path, help="the model repository folder")
    tri.add_argument("--name", default=None, help="the model's name in Triton (default: the file's stem)")
    tri.add_argument("--max-batch-size", type=int, default=32,
                     help="the dynamic batcher's largest batch; 0 serves the file without batching, its "
                          "optional inputs settable per request (default 32)")
    tri.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    tri.add_argument("--gpu", action="store_true", help="run the instances on GPUs (KIND_GPU; default KIND_CPU)")
    tri.add_argument("--max-queue-delay-us", type=int, default=500,
                     help="how long the batcher waits to fill a batch, in microseconds (default 500)")

    srv = sub.add_parser("serve", help="serve explanations over KServe's V1 and V2 (Open Inference) protocols, "
                                       "with a browser page (needs onnx-explain[serve])")
    srv.add_argument("model", type=Path, help="an .onnx file written by `onnx-explain export`, or any ONNX "
                                              "classifier (served with the pure-inference methods)")
    srv.add_argument("--name", default=None, help="the model's name in the URLs (default: the file's stem)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    srv.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: none)")
    srv.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    srv.add_argument("--max-body-mb", type=float, default=32.0,
                     help="largest request body accepted, in MB; larger ones get HTTP 413 (default 32)")
    srv.add_argument("--providers", nargs="+", default=None, help="execution providers, e.g. cuda cpu")
    srv.add_argument("--quiet", action="store_true", help="no per-request access and timing log lines")


def triton(args: argparse.Namespace) -> None:
    written = write_repository(args.model, args.repository, name=args.name, max_batch_size=args.max_batch_size,
                               instances=args.instances, gpu=args.gpu, max_queue_delay_us=args.max_queue_delay_us)
    print(f"wrote {written.config}, {written.model} and {written.labels}")


def serve(args: argparse.Namespace) -> None:
    try:
        from onnx_explain.serving.server import serve as run
    except ImportError as e:
        raise ImportError(f"`onnx-explain serve` needs the serve extra: pip install 'onnx-explain[serve]' ({e})") from e
    run(args.model, name=args.name, host=args.host, port=args.port, grpc_port=args.grpc_port, workers=args.workers,
        max_body_bytes=int(args.max_body_mb * 2**20), providers=args.providers, quiet=args.quiet)
