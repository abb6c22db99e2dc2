"""export_explainer's arguments, as a table: each row is a bad argument (overriding the valid call below),
the error it must give (its type and a fragment of its message).  Every refusal comes before the trace
(the trace is replaced by one that fails the row), and none is a raw error from torch, numpy or difflib.
A few rows at the end must still export."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from onnx_explain.exporters import LayerNotFoundError, export_explainer

export_module = importlib.import_module("onnx_explain.exporters.export")
trace_module = importlib.import_module("onnx_explain.exporters.trace")


class Tiny(nn.Module):
    """Conv2d(3, 4) -> ReLU -> global average pooling -> Linear(4, 3): three classes, conv layer 'features'."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.features(x)).mean(dim=(2, 3)))


def _call(tmp_path, **overrides):
    """The valid call with `overrides` (`model` and `path` included)."""
    torch.manual_seed(0)
    kwargs = dict(input_shape=(3, 16, 16), layers=["features"], methods=["saliency", "gradcam"],
                  validate_export=False)
    model = overrides.pop("model") if "model" in overrides else Tiny()
    path = overrides.pop("path", tmp_path / "out.onnx")
    return export_explainer(model, path, **{**kwargs, **overrides})


BAD = ValueError  # every bad argument is a ValueError (or a subclass named in its row), but a model that is no module
ROWS: list[tuple[str, dict, type, str]] = [
    # B1: the sampled methods' counts, capped where a method uses them
    ("ig_steps 20000 with integrated_gradients", dict(methods=["integrated_gradients"], ig_steps=20000), BAD,
     "ig_steps must be from 1 to 4096 for gausslegendre, got 20000"),
    ("ig_steps 5000 riemann", dict(methods=["ig_smoothgrad"], ig_steps=5000, ig_method="riemann_left"), BAD,
     "ig_steps must be from 2 to 4096 for riemann_left"),
    ("ig_steps 1 riemann", dict(methods=["integrated_gradients"], ig_steps=1, ig_method="riemann_middle"), BAD,
     "ig_steps must be from 2 to 4096 for riemann_middle, got 1: a Riemann sum needs both ends"),
    ("noise_samples 20000 with smoothgrad", dict(methods=["smoothgrad"], noise_samples=20000), BAD,
     "noise_samples must be from 1 to 4096, got 20000"),
    ("ig_method simpson", dict(ig_method="simpson"), BAD, "unknown integration method 'simpson' (ig_method)"),
    # C18: the model
    ("model None", dict(model=None), TypeError, "model must be a torch.nn.Module, got NoneType"),
    ("model lambda", dict(model=lambda x: x), TypeError, "model must be a torch.nn.Module, got function"),
    # E1: a float64 model
    ("model float64", dict(model=Tiny().double()), BAD, "model must be float32: its parameters or buffers are "
     "torch.float64"),
    # C19, D3: input_shape
    ("input_shape 3", dict(input_shape=3), BAD, "input_shape must be [C, H, W] of one image, three integers >= 1"),
    ("input_shape None", dict(input_shape=None), BAD, "input_shape must be [C, H, W]"),
    ("input_shape string item", dict(input_shape=(3, "a", 16)), BAD, "got (3, 'a', 16)"),
    ("input_shape float item", dict(input_shape=(3, 16.9, 16)), BAD, "got (3, 16.9, 16)"),
    ("input_shape bool item", dict(input_shape=(True, 16, 16)), BAD, "got (True, 16, 16)"),
    ("input_shape zero", dict(input_shape=(3, 0, 16)), BAD, "three integers >= 1"),
    ("input_shape two", dict(input_shape=(16, 16)), BAD, "input_shape must be [C, H, W]"),
    ("input_shape 2-D array", dict(input_shape=np.ones((3, 1), np.int64)), BAD, "input_shape must be [C, H, W]"),
    ("input_shape wrong channels", dict(input_shape=(1, 16, 16)), BAD, "its first layer takes 3 channels"),
    # C20: layer names
    ("layers None", dict(layers=None), BAD, "layers must be a module name, a list of them or 'all-conv', got None"),
    ("layers [5]", dict(layers=[5]), BAD, "layers must be module names (strings, as in model.named_modules()), "
     "got 5 (int)"),
    ("feature_layer 5", dict(methods=["saliency"], feature_layer=5), BAD, "feature_layer must be a module name"),
    # E2: a repeated layer
    ("layers repeated", dict(layers=["features", "features"]), BAD, "layer 'features' is repeated in layers"),
    # E3: a feature layer without a feature map
    ("feature_layer linear", dict(methods=["saliency"], feature_layer="fc"), LayerNotFoundError,
     "layer 'fc' (Linear) outputs (1, 3); feature_layer needs a [N, C, h, w] feature map"),
    ("feature_layer with gradcam", dict(feature_layer="features"), BAD, "feature targets explain a channel"),
    # C21, D1: top_k
    ("top_k 2.5", dict(top_k=2.5), BAD, "top_k must be an integer >= 1, got 2.5"),
    ("top_k '2'", dict(top_k="2"), BAD, "top_k must be an integer >= 1, got '2'"),
    ("top_k None", dict(top_k=None), BAD, "top_k must be an integer >= 1, got None"),
    ("top_k True", dict(top_k=True), BAD, "top_k must be an integer >= 1, got True"),
    ("top_k 0", dict(top_k=0), BAD, "top_k must be an integer from 1"),
    ("top_k 4 of 3 classes", dict(top_k=4), BAD, "top_k must be between 1 and the number of classes (3), got 4"),
    # C22, D3: ig_steps and noise_samples, checked even where no method uses them
    ("ig_steps 2.5", dict(ig_steps=2.5), BAD, "ig_steps must be an integer >= 1, got 2.5"),
    ("ig_steps '4'", dict(ig_steps="4"), BAD, "ig_steps must be an integer >= 1, got '4'"),
    ("ig_steps None", dict(ig_steps=None), BAD, "ig_steps must be an integer >= 1, got None"),
    ("ig_steps True", dict(ig_steps=True), BAD, "ig_steps must be an integer >= 1, got True"),
    ("noise_samples '2'", dict(noise_samples="2"), BAD, "noise_samples must be an integer >= 1, got '2'"),
    ("noise_samples None", dict(noise_samples=None), BAD, "noise_samples must be an integer >= 1, got None"),
    ("noise_samples 2.7", dict(noise_samples=2.7), BAD, "noise_samples must be an integer >= 1, got 2.7"),
    ("noise_samples True", dict(noise_samples=True), BAD, "noise_samples must be an integer >= 1, got True"),
    # C23, E4: token_grid
    ("token_grid three", dict(token_grid=(4, 4, 1)), BAD, "token_grid must be (h, w), two integers >= 1"),
    ("token_grid string", dict(token_grid=(4, "a")), BAD, "token_grid must be (h, w), two integers >= 1"),
    ("token_grid 4", dict(token_grid=4), BAD, "h * w tokens), got 4"),
    ("token_grid negative", dict(token_grid=(-1, -1)), BAD, "token_grid must be (h, w), two integers >= 1"),
    # D4: arguments that cannot apply
    ("token_grid for a conv layer", dict(token_grid=(4, 4)), BAD,
     "token_grid [4, 4] applies to layers that output tokens [N, T, C]; ['features'] output feature maps"),
    ("layers unknown without layer methods", dict(layers=["nope"], methods=["saliency"]), LayerNotFoundError,
     "layer 'nope' is not a module of Tiny"),
    ("feature_score bogus", dict(feature_score="bogus"), BAD, "feature_score must be one of ('max', 'sum'), "
     "got 'bogus'"),
    # D2, F6: class_names
    ("class_names ints", dict(class_names=[0, 1, 2]), BAD, "class_names must be strings without control "
     "characters"),
    ("class_names a string", dict(class_names="abc"), BAD, "class_names must be a list or tuple of strings"),
    ("class_names control character", dict(class_names=["a", "b\n", "c"]), BAD, "got 'b\\n' (str)"),
    ("class_names delete character", dict(class_names=["a", "b", "\x7f"]), BAD, "without control characters"),
    ("class_names too few", dict(class_names=["a", "b"]), BAD, "class_names has 2 names but the model has 3 outputs"),
    # C5, E10: methods
    ("methods None", dict(methods=None), BAD, "methods must be a method name or a non-empty list"),
    ("methods nested", dict(methods=[["gradcam"]]), BAD, "methods must be a method name or a non-empty list"),
    ("methods empty", dict(methods=[]), BAD, "methods must be a method name or a non-empty list"),
    ("methods unknown", dict(methods=["lime"]), BAD, "unknown methods ['lime']"),
    ("layer method without layers", dict(layers=[]), BAD, "methods ['gradcam'] need layers=[...]"),
    # mean and std
    ("mean bools", dict(mean=[True, 0, 0]), BAD, "mean must be 3 finite numbers, one per channel; got [True, 0, 0]"),
    ("std strings", dict(std=["1", "1", "1"]), BAD, "std must be 3 finite numbers > 0"),
    ("std a number", dict(std=0.5), BAD, "std must be 3 finite numbers > 0, one per channel; got 0.5"),
    ("std zero", dict(std=[1, 0, 1]), BAD, "std must be 3 finite numbers > 0"),
    ("mean two", dict(mean=[0.5, 0.5]), BAD, "mean must be 3 finite numbers"),
    ("mean huge", dict(mean=[10**400, 0, 0]), BAD, "mean must be 3 finite numbers"),
    # baseline and the other defaults of the file's optional inputs
    ("baseline 10**400", dict(baseline=10**400), BAD, "baseline must be a finite number within float32's range"),
    ("baseline string", dict(baseline="0"), BAD, "baseline must be a number or a float32 array [C, H, W], got '0'"),
    ("baseline True", dict(baseline=True), BAD, "baseline must be a number"),
    ("baseline 1e39", dict(baseline=1e39), BAD, "float32's range"),
    ("noise_std -1", dict(noise_std=-1.0), BAD, "noise_std must be a finite number >= 0"),
    ("counterfactual 'no'", dict(counterfactual="no"), BAD, "counterfactual must be True or False"),
    ("validate_export 'no'", dict(validate_export="no"), BAD, "validate_export must be True or False"),
    # path
    ("path None", dict(path=None), BAD, "path must be a file name"),
]


@pytest.fixture
def untraced(monkeypatch):
    """The trace fails the test: a refusal must come before it."""
    def traced(*args, **kwargs):
        raise AssertionError("traced")

    monkeypatch.setattr(export_module, "trace", traced)


@pytest.mark.parametrize(("overrides", "error", "fragment"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_argument_is_refused_before_the_trace(tmp_path, untraced, overrides, error, fragment):
    with pytest.raises(error) as caught:
        _call(tmp_path, **dict(overrides))
    assert type(caught.value) is error  # not a subclass: a plain ValueError where the row says so
    assert fragment in str(caught.value)
    assert not (tmp_path / "out.onnx").exists()


GOOD: list[tuple[str, dict]] = [
    ("numpy ints for input_shape", dict(input_shape=(np.int64(3), np.int32(16), np.uint8(16)))),
    ("tuple class_names, numpy mean and std", dict(class_names=("a", "b", "c"), mean=np.array([0.5, 0.5, 0.5]),
                                                   std=(1, 2, np.float32(0.5)))),
    ("huge ig_steps and noise_samples unused", dict(methods=["saliency"], ig_steps=20000, noise_samples=20000)),
]


@pytest.mark.parametrize("overrides", [row[1] for row in GOOD], ids=[row[0] for row in GOOD])
def test_good_arguments_export(tmp_path, monkeypatch, overrides):
    def no_rule(*args, **kwargs):  # no path method: the integration rule (steps^3 to build) is never made
        raise AssertionError("integration rule built")

    monkeypatch.setattr(trace_module, "integration_rule", no_rule)
    info = _call(tmp_path, **dict(overrides))
    assert (tmp_path / "out.onnx").exists()
    assert info.input_shape == (3, 16, 16) and all(type(s) is int for s in info.input_shape)
    assert info.num_classes == 3 and info.top_k == 1
    assert info.class_names == (("a", "b", "c") if "class_names" in overrides else ("0", "1", "2"))
    assert info.sampling == {}
