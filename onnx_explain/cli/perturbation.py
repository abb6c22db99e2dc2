"""Command-line subcommands for any ONNX classifier (no exported graph needed): occlusion, rise, the
activation CAMs, and `layers`, which lists the tensors a CAM can use."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnx_explain.core.progress import progress
from onnx_explain.perturbation.activation_cams import ablationcam, eigencam, scorecam
from onnx_explain.perturbation.classifier import Classifier, classifier, layer_tensors
from onnx_explain.perturbation.occlusion import occlusion
from onnx_explain.perturbation.rise import rise
from onnx_explain.render.drawing import load_image, normalized, overlay, save_png, to_rgb8

CAMS = {"eigencam": eigencam, "scorecam": scorecam, "ablationcam": ablationcam}
COMMANDS = ("occlusion", "rise", *CAMS, "layers")


def add_parsers(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", type=Path, help="any ONNX image classifier (NCHW or NHWC input)")
    common.add_argument("images", nargs="+", type=Path, help="image files (any format OpenCV reads)")
    common.add_argument("--out", type=Path, default=Path("explain-out"), help="output folder (default: explain-out)")
    common.add_argument("--target", type=int, default=-1, help="class to explain (default -1: the predicted class)")
    common.add_argument("--mean", nargs=3, type=float, default=None, help="per-channel mean to subtract")
    common.add_argument("--std", nargs=3, type=float, default=None, help="per-channel std to divide by")
    common.add_argument("--layout", choices=["NCHW", "NHWC"], default=None,
                        help="the model's image layout, when its input shape does not tell")
    common.add_argument("--batch-size", type=int, default=None, help="images per model run (default 32)")
    common.add_argument("--providers", nargs="+", default=None, help="execution providers, e.g. cuda cpu")

    occ = sub.add_parser("occlusion", parents=[common], help="occlusion sensitivity of any ONNX classifier")
    occ.add_argument("--window", type=int, required=True, help="window side in pixels")
    occ.add_argument("--stride", type=int, required=True, help="stride in pixels")
    occ.add_argument("--baseline", default="0", help="a number, 'mean' or 'blur' (default 0)")
    occ.add_argument("--score", choices=["prob", "logit"], default="prob", help="score whose drop is measured")

    ri = sub.add_parser("rise", parents=[common], help="RISE saliency of any ONNX classifier")
    ri.add_argument("--masks", type=int, default=2000, help="random masks per image (default 2000)")
    ri.add_argument("--cell", type=int, default=None, help="mask cell size in pixels (default: a 7x7 grid)")
    ri.add_argument("--p", type=float, default=0.5, help="probability of keeping a cell (default 0.5)")
    ri.add_argument("--seed", type=int, default=0, help="mask seed (default 0)")
    ri.add_argument("--score", choices=["prob", "logit"], default="prob", help="score that weighs the masks")

    for name in CAMS:
        cam = sub.add_parser(name, parents=[common], help=f"{name} of any ONNX classifier at one inner tensor")
        cam.add_argument("--layer", required=True,
                         help="a tensor name or torch module name (see `onnx-explain layers MODEL`)")
        cam.add_argument("--layer-layout", choices=["NCHW", "NHWC"], default=None,
                         help="the layer tensor's layout (default: the image input's)")

    lay = sub.add_parser("layers", help="list the inner tensors of an ONNX classifier a CAM can use")
    lay.add_argument("model", type=Path, help="any ONNX image classifier")
    lay.add_argument("--layout", choices=["NCHW", "NHWC"], default=None, help="the model's image layout")


def run(args: argparse.Namespace) -> None:
    model = classifier(args.model, layout=args.layout)
    if args.command == "layers":
        print(f"{'tensor':40s} {'shape':24s} {'op':18s} module")
        for t in layer_tensors(model):
            print(f"{t.name:40s} {str(list(t.shape)):24s} {t.op:18s} {t.module}")
        return
    for path in progress(args.images, len(args.images), args.command):
        shown, x = _image(model, path, args)
        result = _method(model, x, args)
        save_png(args.out / f"{path.stem}.{args.command}.png", overlay(shown, result.heatmap[0]))
        save_png(args.out / f"{path.stem}.input.png", to_rgb8(shown))
        print(f"{path}: explained class {int(result.targets[0])} "
              f"(predicted class {int(result.scores[0].argmax())})")
    print(f"overlays in {args.out.resolve()}")


def _method(model: Classifier, x: np.ndarray, args: argparse.Namespace):
    common = dict(targets=args.target, batch_size=args.batch_size, providers=args.providers)
    if args.command == "occlusion":
        baseline = args.baseline if args.baseline in ("mean", "blur") else float(args.baseline)
        return occlusion(model, x, window=args.window, stride=args.stride, baseline=baseline, score=args.score,
                         **common)
    if args.command == "rise":
        return rise(model, x, args.masks, args.cell, args.p, args.seed, score=args.score, **common)
    if args.command == "eigencam":
        return eigencam(model, x, args.layer, layer_layout=args.layer_layout, providers=args.providers)
    return CAMS[args.command](model, x, args.layer, layer_layout=args.layer_layout, **common)


def _image(model: Classifier, path: Path, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(the image [3, H, W] in [0, 1] to draw on, the batch [1, ...] in the model's layout and scaling)."""
    shown = load_image(path, model.size)
    x = normalized(shown, args.mean, args.std)
    if model.channels == 1:
        x = x.mean(axis=0, keepdims=True)
    if model.layout == "NHWC":
        x = x.transpose(1, 2, 0)
    return shown, np.ascontiguousarray(x[None], dtype=np.float32)
