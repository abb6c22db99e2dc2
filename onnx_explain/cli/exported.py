"""The command line for exported files: `export` writes one, `explain` runs one over image files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.core.progress import progress
from onnx_explain.render.drawing import load_image, overlay, save_png, standardized, to_rgb8
from onnx_explain.runtime.explainer import Explainer


def add_parsers(sub) -> None:
    exp = sub.add_parser("export", help="export a model's explanation graph to ONNX (needs onnx-explain[export])")
    exp.add_argument("model", help="'shapenet' (the shipped model), a torchvision model name, or a file saved "
                                   "with torch.save(model)")
    exp.add_argument("output", type=Path, help="the .onnx file to write")
    exp.add_argument("--layers", nargs="*", default=None, help="module names for the CAM methods")
    exp.add_argument("--methods", nargs="+", default=None,
                     help="methods to export (default: the gradient family; add lrp_epsilon, deeplift, "
                          "integrated_gradients, smoothgrad ... by name)")
    exp.add_argument("--input-shape", nargs=3, type=int, default=None, metavar=("C", "H", "W"),
                     help="one image's shape (default: 3 64 64 for shapenet, 3 224 224 otherwise)")
    exp.add_argument("--top-k", type=int, default=1, help="classes explained per image in one run (default 1)")
    exp.add_argument("--feature-layer", default=None,
                     help="explain channels of this layer instead of classes (input methods only)")
    exp.add_argument("--feature-score", choices=["max", "sum"], default="max",
                     help="a channel's score: its strongest or its total activation (default max)")
    exp.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' steps (default 32)")
    exp.add_argument("--ig-method", default="gausslegendre",
                     help="integration rule: gausslegendre (default), riemann_left, riemann_right, "
                          "riemann_middle, riemann_trapezoid")
    exp.add_argument("--noise-samples", type=int, default=16, help="SmoothGrad's noisy copies (default 16)")
    for option in GRAPH_OPTIONS:  # the file's defaults of its optional inputs
        if option.cli_type is bool:
            exp.add_argument(option.flag, dest=option.name, action="store_true", help=f"by default, {option.help}")
        elif option.name != "seed":
            exp.add_argument(option.flag, dest=option.name, type=option.cli_type, default=option.default,
                             help=f"the file's default: {option.help} (default {option.default})")
    exp.add_argument("--token-grid", nargs=2, type=int, default=None, metavar=("H", "W"),
                     help="grid of a token layer's last H*W tokens (vision transformers; torchvision vit: its "
                          "patch grid by default)")
    add_preprocessing(exp, "the model's per-channel ")

    ex = sub.add_parser("explain", help="explain image files with an exported graph and write overlays")
    ex.add_argument("model", type=Path, help="an .onnx file written by `onnx-explain export`")
    ex.add_argument("images", nargs="+", type=Path, help="image files (any format OpenCV reads)")
    ex.add_argument("--out", type=Path, default=Path("explain-out"), help="output folder (default: explain-out)")
    ex.add_argument("--methods", nargs="+", default=None, help="methods to run (default: all in the file)")
    ex.add_argument("--target", type=int, default=-1, help="class to explain (default -1: the predicted class)")
    for option in GRAPH_OPTIONS:
        if option.cli_type is bool:
            ex.add_argument(option.flag, dest=option.name, action="store_const", const=True, default=None,
                            help=option.help)
        else:
            ex.add_argument(option.flag, dest=option.name, type=option.cli_type, default=None,
                            help=f"{option.help} (default: the file's)")
    add_preprocessing(ex)
    ex.add_argument("--providers", nargs="+", default=None, help="execution providers, e.g. cuda cpu")


def add_preprocessing(parser: argparse.ArgumentParser, what: str = "per-channel ") -> None:
    parser.add_argument("--mean", nargs=3, type=float, default=None,
                        help=f"{what}mean to subtract from images in [0, 1] (default: the file's, else none)")
    parser.add_argument("--std", nargs=3, type=float, default=None,
                        help=f"{what}std to divide by (default: the file's, else none)")


def preprocessing(info, mean, std) -> tuple:
    """(mean, std) for images of an exported file: the command line's, else the file's."""
    stored = info.preprocessing or {}
    return (mean if mean is not None else stored.get("mean"), std if std is not None else stored.get("std"))


def export(args: argparse.Namespace) -> None:
    from onnx_explain.exporters import GRADIENT_FAMILY, export_explainer
    from onnx_explain.exporters.models import load_model, token_grid

    model, default_shape, default_layers, class_names = load_model(args.model)
    layers = args.layers if args.layers is not None else default_layers
    methods = args.methods or sorted(GRADIENT_FAMILY)
    info = export_explainer(model, args.output, input_shape=args.input_shape or default_shape, layers=layers,
                            methods=methods, class_names=class_names, top_k=args.top_k,
                            feature_layer=args.feature_layer, feature_score=args.feature_score,
                            ig_steps=args.ig_steps, ig_method=args.ig_method, noise_samples=args.noise_samples,
                            counterfactual=args.counterfactual, noise_std=args.noise_std, baseline=args.baselines,
                            lrp_epsilon=args.lrp_epsilon, token_grid=args.token_grid or token_grid(model),
                            mean=args.mean, std=args.std)
    print(f"wrote {args.output}: methods {list(info.methods)}, layers {list(info.layers)}, "
          f"input [N, {', '.join(map(str, info.input_shape))}]")


def explain(args: argparse.Namespace) -> None:
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise ValueError(f"no image file at {', '.join(missing)}")
    explainer = Explainer(args.model, providers=args.providers)
    top_k = explainer.info.top_k
    if top_k > 1 and args.target != -1:
        raise ValueError(f"{args.model.name} explains its {top_k} highest classes per image; "
                         "--target picks one class and needs a file exported with --top-k 1")
    shape = explainer.info.input_shape
    options = {o.name: getattr(args, o.name) for o in GRAPH_OPTIONS}
    for path in progress(args.images, len(args.images), "explaining"):
        image = load_image(path, shape[1:])
        x = standardized(image, *preprocessing(explainer.info, args.mean, args.std))
        targets = args.target if top_k == 1 else None  # a file with k targets explains its top k
        result = explainer.explain(x[None], methods=args.methods, targets=targets, **options)
        chosen = np.atleast_1d(result.targets[0])
        for (method, layer), m in result.maps.items():
            stem = f"{path.stem}.{method}" + (f"@{layer}" if layer else "")
            heatmaps = m.heatmap[0] if top_k > 1 else m.heatmap[0][None]
            for target, heatmap in zip(chosen, heatmaps, strict=True):
                suffix = "" if len(chosen) == 1 else f".target{target}"
                save_png(args.out / f"{stem}{suffix}.png", overlay(image, heatmap))
        save_png(args.out / f"{path.stem}.input.png", to_rgb8(image))
        predicted = explainer.info.class_names[int(result.logits[0].argmax())]
        print(f"{path}: explained {result.labels[0]} (predicted class {predicted})")
    print(f"overlays in {args.out.resolve()}")
