"""The onnx-explain command line, each subcommand a thin call into the library: demo, export and explain
(exported.py), the pure-inference methods on any ONNX classifier (perturbation.py), triton and serve
(serving.py), explain-dataset (datasets.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from onnx_explain.cli import datasets, exported, serving
from onnx_explain.cli import perturbation as cli_models
from onnx_explain.core.errors import first_line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (main prints it and returns 2) instead of exiting."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="onnx-explain", description="Explain image classifiers in ONNX Runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="export the shipped ShapeNet, explain held-out images, write an HTML page")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--images", type=int, default=16, help="held-out images to show (default: 16)")
    demo.add_argument("--score-images", type=int, default=200,
                      help="held-out images for the pointing-game score (default: 200)")

    exported.add_parsers(sub)
    cli_models.add_parsers(sub)
    serving.add_parsers(sub)
    datasets.add_parsers(sub)

    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"onnx-explain: error: {e}", file=sys.stderr)
        return 2
    try:
        _check_out(args)
        if args.command in cli_models.COMMANDS:
            cli_models.run(args)
        elif args.command == "demo":
            from onnx_explain.cli.demo import run_demo

            run_demo(args.out, n_show=args.images, n_score=args.score_images)
        elif args.command == "export":
            exported.export(args)
        elif args.command == "triton":
            serving.triton(args)
        elif args.command == "serve":
            serving.serve(args)
        elif args.command == "explain-dataset":
            datasets.explain_dataset(args)
        else:
            exported.explain(args)
    except (ValueError, OSError, ImportError) as e:  # every expected failure: one line, no traceback
        print(f"onnx-explain {args.command}: error: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


def _check_out(args: argparse.Namespace) -> None:
    """The cheap checks first: an output folder that cannot be one fails before any work."""
    out = getattr(args, "out", None)
    if not isinstance(out, Path):  # explain-dataset's may be an object-store URI: Ray checks it
        return
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"--out {out} cannot be a folder: {blocking} is a file")


if __name__ == "__main__":
    sys.exit(main())
