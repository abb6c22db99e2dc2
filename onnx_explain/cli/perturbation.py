"""Command-line subcommands for any ONNX classifier (no exported graph needed), one per registered
pure-inference method, and `layers`, which lists the tensors a CAM can use."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from onnx_explain.cli.exported import add_preprocessing
from onnx_explain.core.progress import progress
from onnx_explain.perturbation import METHODS, explain
from onnx_explain.perturbation.classifier import Classifier, classifier, layer_tensors
from onnx_explain.perturbation.methods import REQUIRED
from onnx_explain.render.drawing import load_image, model_input, overlay, save_png, to_rgb8

COMMANDS = (*METHODS, "layers")


def add_parsers(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", type=Path, help="any ONNX image classifier (NCHW or NHWC input)")
    common.add_argument("images", nargs="+", type=Path, help="image files (any format OpenCV reads)")
    common.add_argument("--out", type=Path, default=Path("explain-out"), help="output folder (default: explain-out)")
    common.add_argument("--target", type=int, default=-1, help="class to explain (default -1: the predicted class)")
    add_preprocessing(common)
    common.add_argument("--layout", choices=["NCHW", "NHWC"], default=None,
                        help="the model's image layout, when its input shape does not tell")
    common.add_argument("--score", choices=["prob", "logit"], default="prob",
                        help="the score whose change is measured (default prob)")
    common.add_argument("--batch-size", type=int, default=None, help="images per model run (default 32)")
    common.add_argument("--providers", nargs="+", default=None, help="execution providers, e.g. cuda cpu")
    for m in METHODS.values():
        parser = sub.add_parser(m.name, parents=[common], help=f"{m.summary} (any ONNX classifier)")
        for option in m.options:
            required = option.default is REQUIRED
            default = "" if required else f" (default {option.default})" if "default" not in option.help else ""
            parser.add_argument(option.flag, dest=option.name, type=_parsing(option), required=required,
                                default=None if required else option.default, help=option.help + default)

    lay = sub.add_parser("layers", help="list the inner tensors of an ONNX classifier a CAM can use")
    lay.add_argument("model", type=Path, help="any ONNX image classifier")
    lay.add_argument("--layout", choices=["NCHW", "NHWC"], default=None, help="the model's image layout")


def _parsing(option):
    """option.parse, with argparse's message naming the flag and what it takes."""
    def parse(text: str):
        try:
            return option.parse(text)
        except (ValueError, TypeError) as e:
            takes = re.sub(r" [(]default [^)]*[)]$", "", option.help)
            raise argparse.ArgumentTypeError(f"{text!r} is not {takes}") from e

    parse.__name__ = option.name
    return parse


def run(args: argparse.Namespace) -> None:
    missing = [str(p) for p in getattr(args, "images", ()) if not p.is_file()]
    if missing:
        raise ValueError(f"no image file at {', '.join(missing)}")
    model = classifier(args.model, layout=args.layout)
    if args.command == "layers":
        print(f"{'tensor':40s} {'shape':24s} {'op':18s} module")
        for t in layer_tensors(model):
            print(f"{t.name:40s} {str(list(t.shape)):24s} {t.op:18s} {t.module}")
        return
    options = {o.name: getattr(args, o.name) for o in METHODS[args.command].options}
    for path in progress(args.images, len(args.images), args.command):
        shown, x = _image(model, path, args)
        result = explain(model, x, args.command, args.target, score=args.score, batch_size=args.batch_size,
                         providers=args.providers, **options)
        save_png(args.out / f"{path.stem}.{args.command}.png", overlay(shown, result[args.command].heatmap[0]))
        save_png(args.out / f"{path.stem}.input.png", to_rgb8(shown))
        print(f"{path}: explained class {int(result.targets[0])} (predicted class {int(result.logits[0].argmax())})")
    print(f"overlays in {args.out.resolve()}")


def _image(model: Classifier, path: Path, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(the image [3, H, W] in [0, 1] to draw on, the batch [1, ...] in the model's layout and scaling)."""
    shown = load_image(path, model.size)
    return shown, model_input(shown, args.mean, args.std, model.channels, model.layout)[None]
