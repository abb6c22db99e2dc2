"""Bad input, as a table: each row is an entry point, a bad input, and the error it must give (its type
and a fragment of its message).  Nothing returns a NaN map, and nothing escapes as a raw traceback from
torch, ONNX Runtime, numpy or OpenCV.  A regression shows as a failing row."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from any_models import handmade
from onnx import helper, numpy_helper

import onnx_explain as ox
from onnx_explain.core.errors import ModelLoadError, NonFiniteResultError


@dataclass
class Context:
    """What a row's call gets: the shipped model's file (every method, every optional input), an
    Explainer over it, valid images for it, a plain ONNX classifier and its images, and a scratch folder."""

    path: Path
    explainer: ox.Explainer
    x: np.ndarray
    plain: str
    plain_x: np.ndarray
    tmp: Path


@pytest.fixture(scope="module")
def ctx(exported, tmp_path_factory):
    e = exported("shapenet")
    tmp = tmp_path_factory.mktemp("bad")
    onnx.save(handmade("NCHW"), tmp / "plain.onnx")
    rng = np.random.default_rng(0)
    return Context(e.path, e.explainer, rng.random((2, 3, 64, 64), dtype=np.float32), str(tmp / "plain.onnx"),
                   rng.random((2, 3, 16, 16), dtype=np.float32), tmp)


def with_metadata(c: Context, edit: Callable[[dict], object], name: str) -> Path:
    """The shipped file with its metadata JSON edited (edit returns the new JSON value)."""
    model = onnx.load(str(c.path))
    prop = next(p for p in model.metadata_props if p.key == "onnx_explain")
    prop.value = json.dumps(edit(json.loads(prop.value)))
    path = c.tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def edited(**fields) -> Callable[[dict], dict]:
    return lambda data: {**data, **fields}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_raw_metadata(c: Context, text: str, name: str) -> Path:
    model = onnx.load(str(c.path))
    next(p for p in model.metadata_props if p.key == "onnx_explain").value = text
    path = c.tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def nan_model(c: Context) -> str:
    """A plain classifier whose logits are NaN."""
    model = handmade("NCHW")
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
    model.graph.node.append(helper.make_node("Mul", ["logits", "nan"], ["scores"]))
    model.graph.output[0].name = "scores"
    path = c.tmp / "nan.onnx"
    onnx.save(model, str(path))
    return str(path)


def custom_op_model(c: Context) -> str:
    """A plain classifier with an op from a domain ONNX Runtime does not know."""
    model = handmade("NCHW")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "example.custom"
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    path = c.tmp / "custom.onnx"
    onnx.save(model, str(path))
    return str(path)


def empty_file(c: Context) -> Path:
    path = c.tmp / "empty.onnx"
    path.write_bytes(b"")
    return path


def huge(c: Context) -> np.ndarray:
    return np.full_like(c.x, 1e38)


BAD = ValueError  # every bad input is a ValueError (or a subclass named in its row)
ROWS: list[tuple[str, Callable[[Context], object], type, str]] = [
    # Explainer.explain: non-finite results and parameters
    ("explain images 1e38", lambda c: c.explainer.explain(huge(c), ["saliency"]), NonFiniteResultError,
     "non-finite"),
    ("explain noise_std 1e39", lambda c: c.explainer.explain(c.x, ["smoothgrad"], noise_std=1e39), BAD,
     "fits in float32"),
    ("explain noise_std nan", lambda c: c.explainer.explain(c.x, ["smoothgrad"], noise_std=float("nan")), BAD,
     "noise_std must be a finite number"),
    ("explain noise_std 1e38", lambda c: c.explainer.explain(c.x, ["smoothgrad"], noise_std=1e38),
     NonFiniteResultError, "smoothgrad"),
    ("explain baselines 1e39", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=1e39), BAD,
     "float32's range"),
    ("explain baselines 1e38", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=1e38),
     NonFiniteResultError, "deeplift"),
    ("explain baselines True", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=True), BAD,
     "baselines must be a number"),
    ("explain lrp_epsilon -1", lambda c: c.explainer.explain(c.x, ["lrp_epsilon"], lrp_epsilon=-1.0), BAD,
     "lrp_epsilon must be a finite number >= 0"),
    # Explainer.explain: flags, integers and targets
    ("explain counterfactual 'no'", lambda c: c.explainer.explain(c.x, ["gradcam"], counterfactual="no"), BAD,
     "counterfactual must be True or False"),
    ("explain counterfactual array", lambda c: c.explainer.explain(c.x, counterfactual=np.array([True, False])),
     BAD, "counterfactual must be True or False"),
    ("explain seed 2**64", lambda c: c.explainer.explain(c.x, ["smoothgrad"], seed=2**64), BAD, "fit in int64"),
    ("explain seed uint64 max", lambda c: c.explainer.explain(c.x, ["smoothgrad"], seed=np.uint64(2**64 - 1)), BAD,
     "fit in int64"),
    ("explain seed True", lambda c: c.explainer.explain(c.x, ["smoothgrad"], seed=True), BAD,
     "seed must be an integer"),
    ("explain targets []", lambda c: c.explainer.explain(c.x, targets=[]), BAD, "targets is empty"),
    ("explain targets 1.7", lambda c: c.explainer.explain(c.x, targets=1.7), BAD, "integer class indices"),
    ("explain targets uint64 max", lambda c: c.explainer.explain(c.x, targets=np.uint64(2**64 - 1)), BAD,
     "out of range"),
    # The file's metadata, checked against a schema and the graph
    ("metadata null", lambda c: ox.Explainer(with_raw_metadata(c, "null", "null")), BAD, "JSON object"),
    ("metadata nested", lambda c: ox.Explainer(with_raw_metadata(c, nested(100_000), "nested")), BAD,
     "corrupt"),
    ("metadata layers list", lambda c: ox.Explainer(with_metadata(c, edited(layers=[[1, 2]]), "layers")), BAD,
     "'layers'"),
    ("metadata points 0", lambda c: ox.Explainer(with_metadata(c, edited(points=0), "points")), BAD, "'points'"),
    ("metadata top_k 0", lambda c: ox.Explainer(with_metadata(c, edited(top_k=0), "topk0")), BAD, "'top_k'"),
    ("metadata top_k 3", lambda c: ox.Explainer(with_metadata(c, edited(top_k=3), "topk3")), BAD, "'top_k' is 3"),
    ("metadata num_classes", lambda c: ox.Explainer(with_metadata(
        c, lambda d: {**d, "num_classes": 7, "class_names": list("abcdefg")}, "classes")), BAD, "'num_classes'"),
    ("metadata class_names", lambda c: ox.Explainer(with_metadata(c, edited(class_names=["a"]), "names")), BAD,
     "'class_names'"),
    ("metadata missing output", lambda c: ox.Explainer(with_metadata(
        c, lambda d: {**d, "maps": [{**d["maps"][0], "heatmap": "nope.heatmap"}]}, "output")), BAD,
     "does not have: ['nope.heatmap']"),
    ("empty .onnx", lambda c: ox.Explainer(empty_file(c)), BAD, "empty file"),
    # Pure-inference methods on any ONNX classifier
    ("occlusion baseline nan", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4,
                                                      baseline=float("nan")), BAD, "baseline must be a finite"),
    ("occlusion baseline inf", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4,
                                                      baseline=float("inf")), BAD, "baseline must be a finite"),
    ("occlusion baseline 1e38", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4, baseline=1e38),
     NonFiniteResultError, "occlusion"),
    ("occlusion window True", lambda c: ox.occlusion(c.plain, c.plain_x, window=True, stride=4), BAD,
     "window must be a positive int"),
    ("occlusion incremental 'yes'", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4, incremental="yes"),
     BAD, "incremental must be one of"),
    ("occlusion incremental 1", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4, incremental=1), BAD,
     "incremental must be one of"),
    ("occlusion batch_size 0", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4, batch_size=0), BAD,
     "batch_size must be an integer from 1"),
    ("occlusion batch_size 1.5", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4, batch_size=1.5),
     BAD, "batch_size must be an integer"),
    ("occlusion batch_size 2**70", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4,
                                                          batch_size=2**70), BAD, "batch_size must be an integer"),
    ("occlusion model outputs NaN", lambda c: ox.occlusion(nan_model(c), c.plain_x, window=4, stride=4),
     NonFiniteResultError, "non-finite"),
    ("rise model outputs NaN", lambda c: ox.rise(nan_model(c), c.plain_x, n_masks=8), NonFiniteResultError,
     "non-finite"),
    ("rise n_masks True", lambda c: ox.rise(c.plain, c.plain_x, n_masks=True), BAD, "n_masks must be an integer"),
    ("rise cell 0", lambda c: ox.rise(c.plain, c.plain_x, n_masks=8, cell=0), BAD, "cell must be a positive int"),
    ("rise seed 2**64", lambda c: ox.rise(c.plain, c.plain_x, n_masks=8, seed=2**64), BAD, "fit in int64"),
    ("scorecam images 1e38", lambda c: ox.scorecam(c.plain, np.full_like(c.plain_x, 1e38), "act"),
     NonFiniteResultError, "non-finite"),
    ("ablationcam images 1e38", lambda c: ox.ablationcam(c.plain, np.full_like(c.plain_x, 1e38), "act"),
     NonFiniteResultError, "non-finite"),
    ("eigencam images 1e38", lambda c: ox.eigencam(c.plain, np.full_like(c.plain_x, 1e38), "act"),
     NonFiniteResultError, "non-finite"),
    ("eigencam model outputs NaN", lambda c: ox.eigencam(nan_model(c), c.plain_x, "act"), NonFiniteResultError,
     "non-finite"),
    ("scorecam rank-2 layer", lambda c: ox.scorecam(c.plain, c.plain_x, "features"), BAD,
     "a CAM needs a feature map"),
    ("ablationcam rank-2 layer", lambda c: ox.ablationcam(c.plain, c.plain_x, "features"), BAD,
     "a CAM needs a feature map"),
    ("eigencam rank-2 layer", lambda c: ox.eigencam(c.plain, c.plain_x, "features"), BAD,
     "a CAM needs a feature map"),
    ("explain unknown option", lambda c: ox.explain(c.plain, c.plain_x, "occlusion", window=4, stride=4, cell=2),
     BAD, "are not taken by"),
    ("explain missing option", lambda c: ox.explain(c.plain, c.plain_x, "occlusion", window=4), BAD,
     "need the options ['stride']"),
    ("explain unknown method", lambda c: ox.explain(c.plain, c.plain_x, "gradcam"), BAD, "unknown methods"),
    ("custom-domain op", lambda c: ox.occlusion(custom_op_model(c), c.plain_x, window=4, stride=4),
     ModelLoadError, "cannot load"),
    # class_model checks its target first
    ("class_model target 1.7", lambda c: ox.class_model(c.explainer, 1.7, steps=1), BAD, "target must be"),
    ("class_model target '1'", lambda c: ox.class_model(c.explainer, "1", steps=1), BAD, "target must be"),
    ("class_model lr nan", lambda c: ox.class_model(c.explainer, 1, steps=1, lr=float("nan")), BAD,
     "lr must be a finite number"),
    # Rendering
    ("overlay NaN heatmap", lambda c: ox.overlay(c.x[0], np.full((64, 64), np.nan)), BAD, "heatmap contains NaN"),
    ("overlay inf image", lambda c: ox.overlay(np.full_like(c.x[0], np.inf), np.zeros((64, 64))), BAD,
     "image contains NaN"),
    ("overlay empty heatmap", lambda c: ox.overlay(c.x[0], np.zeros((0, 0))), BAD, "H, W >= 1"),
    ("overlay colormap 999", lambda c: ox.overlay(c.x[0], np.zeros((64, 64)), colormap=999), BAD, "colormap"),
    ("save_png to a directory", lambda c: ox.save_png(c.tmp, np.zeros((4, 4, 3), np.uint8)), BAD,
     "file name ending"),
    ("save_png to a directory named .png", lambda c: ox.save_png(_folder(c.tmp / "d.png"),
                                                                 np.zeros((4, 4, 3), np.uint8)), BAD,
     "it is a directory"),
    ("save_png unknown extension", lambda c: ox.save_png(c.tmp / "x.xyz", np.zeros((4, 4, 3), np.uint8)), BAD,
     "file name ending"),
    ("save_png huge scale", lambda c: ox.save_png(c.tmp / "x.png", np.zeros((4, 4, 3), np.uint8), scale=60000), BAD,
     "would exceed"),
    ("save_png path with NUL", lambda c: ox.save_png("a\0b.png", np.zeros((4, 4, 3), np.uint8)), BAD,
     "expected a file path"),
    ("load_image size (0, 0)", lambda c: ox.load_image(_png(c), (0, 0)), BAD, "size must be (H, W)"),
    ("load_image path with NUL", lambda c: ox.load_image(str(_png(c)) + "\0.png", (8, 8)), BAD,
     "expected a file path"),
    ("load_image decompression bomb", lambda c: ox.load_image(_bomb(c), (8, 8)), BAD, "declares 67240000 pixels"),
    ("overlay colormap True", lambda c: ox.overlay(c.x[0], np.zeros((64, 64)), colormap=True), BAD, "colormap"),
    ("overlay colormap 1.0", lambda c: ox.overlay(c.x[0], np.zeros((64, 64)), colormap=1.0), BAD, "colormap"),
    ("overlay int64 image", lambda c: ox.overlay(np.full((16, 16, 3), 128, np.int64), np.zeros((16, 16))), BAD,
     "float array in [0, 1] or uint8"),
    ("boxes threshold '0.5'", lambda c: ox.boxes(np.zeros((8, 8)), threshold="0.5"), BAD, "threshold"),
    ("pointing tolerance '2'", lambda c: ox.pointing_hits(np.zeros((1, 4, 4)), np.zeros((1, 4), int), "2"), BAD,
     "tolerance"),
    ("pointing NaN heatmaps", lambda c: ox.pointing_hits(np.full((1, 4, 4), np.nan), np.zeros((1, 4), int)), BAD,
     "finite"),
    # Metadata that would reach file names and terminals
    ("metadata method path", lambda c: ox.Explainer(with_metadata(
        c, lambda d: {**d, "maps": [{**d["maps"][0], "method": "x/../../PWNED"}, *d["maps"][1:]]}, "trav")), BAD,
     "'maps'"),
    ("metadata class name escape", lambda c: ox.Explainer(with_metadata(
        c, lambda d: {**d, "class_names": ["\x1b[2Jx", *d["class_names"][1:]]}, "escape")), BAD, "'class_names'"),
    ("metadata input_shape", lambda c: ox.Explainer(with_metadata(c, edited(input_shape=[3, 32, 32]), "shape")), BAD,
     "'input_shape'"),
    ("metadata preprocessing", lambda c: ox.Explainer(with_metadata(c, edited(preprocessing={"mean": [0.5, 0.5]}),
                                                                    "pre")), BAD, "'preprocessing'"),
    # Types the API does not take
    ("Explainer providers [1]", lambda c: ox.Explainer(c.path, providers=[1]), BAD, "providers must be"),
    ("Explainer max_images_per_run 2.5", lambda c: ox.Explainer(c.path, max_images_per_run=2.5), BAD,
     "max_images_per_run must be an integer"),
    ("explain methods 5", lambda c: c.explainer.explain(c.x, methods=5), BAD, "methods must be"),
    ("explain methods []", lambda c: c.explainer.explain(c.x, methods=[]), BAD, "methods must be"),
    ("explain targets ragged", lambda c: c.explainer.explain(c.x, targets=[[1], [1, 2]]), BAD,
     "targets must be integer"),
    ("explain baselines 10**400", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=10**400), BAD,
     "float32's range"),
    ("explain baselines array(True)", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=np.array(True)),
     BAD, "baselines must be a number"),
    ("explain baselines complex", lambda c: c.explainer.explain(c.x, ["deeplift"], baselines=np.complex64(1)), BAD,
     "baselines must be a number"),
    ("any-ONNX methods None", lambda c: ox.explain(c.plain, c.plain_x, None), BAD, "methods must be"),
    ("occlusion baseline array", lambda c: ox.occlusion(c.plain, c.plain_x, window=4, stride=4,
                                                        baseline=np.zeros(3)), BAD, "baseline must be a number"),
    ("occlusion_graph batch_size 0", lambda c: ox.occlusion_graph(c.plain, window=4, stride=4, batch_size=0), BAD,
     "batch_size must be an integer from 1"),
    ("rise_masks seed 2**64", lambda c: ox.rise_masks((16, 16), 4, seed=2**64), BAD, "fit in int64"),
    ("rise_masks size (16,)", lambda c: ox.rise_masks((16,), 4), BAD, "size must be (H, W)"),
    ("rise p complex", lambda c: ox.rise(c.plain, c.plain_x, n_masks=8, p=np.complex64(0.5)), BAD,
     "p (the probability"),
    ("rise p 1e-45", lambda c: ox.rise(c.plain, c.plain_x, n_masks=8, p=1e-45), BAD, "p (the probability"),
    ("cam_graph kind 'foo'", lambda c: ox.cam_graph(c.plain, layer="act", kind="foo"), BAD, "kind must be one of"),
    ("cam_graph unknown layer", lambda c: ox.cam_graph(c.plain, layer="nope", kind="activations"), BAD,
     "no tensor or module named 'nope'"),
    ("one-class model with prob", lambda c: ox.occlusion(_one_class(c), c.plain_x, window=4, stride=4), BAD,
     "one class"),
    ("Explainer of None", lambda c: ox.Explainer(None), BAD, "path must be the .onnx file's path"),
    ("class_model of a path", lambda c: ox.class_model(str(c.path), 1), TypeError, "takes an Explainer"),
    ("class_model lr 1e38", lambda c: ox.class_model(c.explainer, 1, steps=3, lr=1e38, show_progress=False), BAD,
     "the ascent diverged"),
    ("class_model init NaN", lambda c: ox.class_model(c.explainer, 1, steps=1, init=np.full((3, 64, 64), np.nan)),
     BAD, "init must be finite"),
]


def _png(c: Context) -> Path:
    return ox.save_png(c.tmp / "small.png", np.zeros((8, 8, 3), np.uint8))


def _bomb(c: Context) -> Path:
    """A PNG of a few hundred KB that decodes to 8200 x 8200 pixels (over the reader's limit)."""
    import cv2

    path = c.tmp / "bomb.png"
    if not path.exists():
        cv2.imwrite(str(path), np.zeros((8200, 8200), np.uint8))
    return path


def _one_class(c: Context) -> str:
    path = c.tmp / "one.onnx"
    onnx.save(handmade("NCHW", classes=1), str(path))
    return str(path)


def _folder(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize(("entry", "call", "error", "fragment"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gets_a_clear_error(ctx, entry, call, error, fragment):
    with pytest.raises(error) as raised:
        call(ctx)
    assert fragment in str(raised.value), f"{entry}: {raised.value}"


# Inputs handled well: the expected result, not an error.
GOOD: list[tuple[str, Callable[[Context], object], Callable[[object], bool]]] = [
    ("explain images 1e37", lambda c: c.explainer.explain(np.full_like(c.x, 1e37), ["gradcam"]),
     lambda r: np.isfinite(r["gradcam"].heatmap).all()),
    ("explain counterfactual numpy bool", lambda c: c.explainer.explain(c.x, ["gradcam"],
                                                                        counterfactual=np.bool_(True)),
     lambda r: r["gradcam"].heatmap.shape == (2, 64, 64)),
    ("explain seed numpy int", lambda c: c.explainer.explain(c.x, ["smoothgrad"], seed=np.int64(3)),
     lambda r: np.isfinite(r["smoothgrad"].raw).all()),
    ("occlusion numpy window", lambda c: ox.occlusion(c.plain, c.plain_x, window=np.int64(4), stride=(4, 4)),
     lambda r: r["occlusion"].grid.shape == (2, 4, 4)),
    ("occlusion numpy array window", lambda c: ox.occlusion(c.plain, c.plain_x, window=np.array([4, 4]), stride=4),
     lambda r: r["occlusion"].grid.shape == (2, 4, 4)),
    ("boxes of top-k heatmaps", lambda c: ox.boxes(np.ones((2, 3, 8, 8)), threshold=0.5),
     lambda r: r.shape == (2, 3, 4) and (r == [0, 0, 7, 7]).all()),
    ("layer_tensors of a path", lambda c: ox.layer_tensors(c.plain), lambda r: "act" in [t.name for t in r]),
    ("rise cell 1 is drawn chunk by chunk", lambda c: ox.rise(c.plain, c.plain_x, n_masks=64, cell=1, batch_size=8),
     lambda r: np.isfinite(r["rise"].heatmap).all()),
]


@pytest.mark.parametrize(("entry", "call", "check"), GOOD, ids=[r[0] for r in GOOD])
def test_valid_edge_input_works(ctx, entry, call, check):
    assert check(call(ctx)), entry


def _image(c: Context, size: int = 16) -> str:
    path = c.tmp / f"image{size}.png"
    ox.save_png(path, np.zeros((size, size, 3), np.uint8))
    return str(path)


def _regular_file(c: Context) -> str:
    path = c.tmp / "a-file"
    path.write_text("x")
    return str(path)


def _not_a_pickle(c: Context) -> str:
    path = c.tmp / "model.pt"
    path.write_bytes(b"not a pickle")
    return str(path)


# The command line: every failure is one line on stderr and exit status 2, before any expensive work.
CLI_ROWS: list[tuple[str, Callable[[Context], list[str]], str]] = [
    ("occlusion --baseline nan", lambda c: ["occlusion", c.plain, _image(c), "--window", "4", "--stride", "4",
                                            "--baseline", "nan", "--out", str(c.tmp / "o")],
     "baseline must be a finite"),
    ("occlusion --incremental maybe", lambda c: ["occlusion", c.plain, _image(c), "--window", "4", "--stride", "4",
                                                 "--incremental", "maybe", "--out", str(c.tmp / "o")],
     "is not auto, true or false"),
    ("occlusion --std 0 0 0", lambda c: ["occlusion", c.plain, _image(c), "--window", "4", "--stride", "4",
                                         "--std", "0", "0", "0", "--out", str(c.tmp / "o")], "std must be positive"),
    ("explain --seed beyond int64", lambda c: ["explain", str(c.path), _image(c, 64), "--seed",
                                               "99999999999999999999", "--out", str(c.tmp / "o")], "fit in int64"),
    ("explain --out is a file", lambda c: ["explain", str(c.path), _image(c, 64), "--out", _regular_file(c)],
     "is a file"),
    ("explain --out under a file", lambda c: ["explain", str(c.path), _image(c, 64), "--out",
                                              _regular_file(c) + "/sub"], "is a file"),
    ("explain an unreadable image", lambda c: ["explain", str(c.path), str(c.tmp / "none.png"), "--out",
                                               str(c.tmp / "o")], "no image file at"),
    ("export to a directory", lambda c: ["export", "shapenet", str(c.tmp)], "it is a directory"),
    ("export under a file", lambda c: ["export", "shapenet", _regular_file(c) + "/m.onnx"], "is a file"),
    ("export a .pt that is not a pickle", lambda c: ["export", _not_a_pickle(c), str(c.tmp / "m.onnx")],
     "not a file written by torch.save"),
    ("export with the wrong channels", lambda c: ["export", "shapenet", str(c.tmp / "m.onnx"), "--input-shape",
                                                  "1", "64", "64"], "first layer takes 3 channels"),
    ("demo --images 0", lambda c: ["demo", "--images", "0", "--out", str(c.tmp / "demo")],
     "images must be an integer"),
    ("demo --images 1000000", lambda c: ["demo", "--images", "1000000", "--out", str(c.tmp / "demo")], "at most"),
    ("no subcommand", lambda c: [], "required: command"),
    ("occlusion --window abc", lambda c: ["occlusion", c.plain, _image(c), "--window", "abc", "--stride", "4"],
     "'abc' is not window side"),
    ("explain --mean nan", lambda c: ["explain", str(c.path), _image(c, 64), "--mean", "nan", "0", "0", "--out",
                                      str(c.tmp / "o")], "mean must be finite"),
    ("explain with a missing image among", lambda c: ["explain", str(c.path), _image(c, 64), str(c.tmp / "none.png"),
                                                      "--out", str(c.tmp / "partial")], "no image file at"),
]


@pytest.mark.parametrize(("entry", "argv", "fragment"), CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_command_line_failure_is_one_line(ctx, capsys, entry, argv, fragment):
    from onnx_explain.cli import main

    assert main(argv(ctx)) == 2, entry
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (ctx.tmp / "partial").exists(), "nothing is written before every input is checked"
