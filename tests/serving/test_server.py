"""`onnx-explain serve`, started for real on a free loopback port, talked to with clients no one here
wrote: tritonclient's HTTP client for the Open Inference Protocol (JSON and binary tensors) and plain
HTTP for KServe V1.  Every tensor equals the in-process result bit for bit; every bad request gets a
4xx with a JSON body, and the server goes on serving."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from any_models import handmade
from servers import get, post

import onnx_explain as ox
from onnx_explain.render.drawing import to_rgb8
from onnx_explain.serving.process import running_server
from onnx_explain.serving.service import Service

MAPS = ["gradcam@features.heatmap", "saliency.raw", "deeplift.delta"]


@pytest.fixture(scope="module")
def served(exported):
    e = exported("shapenet")
    with running_server(e.path, "--name", "shapes", "--max-body-mb", "1") as url:
        yield url, e


@pytest.fixture(scope="module")
def served_plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "plain.onnx"
    onnx.save(handmade("NCHW", size=16), path)
    with running_server(path) as url:
        yield url, path


def images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def png_b64(rgb01: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(to_rgb8(rgb01)[..., ::-1]))
    return base64.b64encode(png.tobytes()).decode()


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def tensor(name: str, value: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    t = triton.InferInput(name, list(value.shape), datatype)
    t.set_data_from_numpy(value, binary_data=binary)
    return t


def test_health_and_metadata(served):
    url, e = served
    c = client(url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("shapes")
    meta = c.get_model_metadata("shapes")
    assert {"name": "images", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]} in [
        {k: v if k != "shape" else [str(s) for s in v] for k, v in i.items()} for i in meta["inputs"]]
    assert {o["name"] for o in meta["outputs"]} >= {"logits", "explained_targets", *MAPS}
    status, metrics = get(f"{url}/metrics")
    assert status == 200 and b"request_predict_seconds" in metrics  # KServe's Prometheus histograms


@pytest.mark.parametrize("binary", [False, True])
def test_v2_infer_equals_the_explainer(served, binary):
    url, e = served
    x, targets = images(3), np.array([-1, 2, 0], np.int64)
    inputs = [tensor("images", x, "FP32", binary), tensor("targets", targets, "INT64", binary),
              tensor("counterfactual", np.array([True]), "BOOL", binary)]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ["logits", "explained_targets", *MAPS]]
    result = client(url).infer("shapes", inputs, outputs=outputs)
    want = e.explainer.explain(x, ["gradcam", "saliency", "deeplift"], targets, counterfactual=True)
    np.testing.assert_array_equal(result.as_numpy("logits"), want.logits)
    np.testing.assert_array_equal(result.as_numpy("explained_targets"), want.targets)
    np.testing.assert_array_equal(result.as_numpy("gradcam@features.heatmap"), want["gradcam"].heatmap)
    np.testing.assert_array_equal(result.as_numpy("saliency.raw"), want["saliency"].raw)
    np.testing.assert_array_equal(result.as_numpy("deeplift.delta"), want["deeplift"].delta)


def test_v2_defaults_fill_what_the_request_leaves_out(served):
    url, e = served
    x = images(2, seed=1)
    result = client(url).infer("shapes", [tensor("images", x, "FP32", True)],
                               outputs=[triton.InferRequestedOutput("gradcam@features.heatmap")])
    want = e.explainer.explain(x, ["gradcam"])
    np.testing.assert_array_equal(result.as_numpy("gradcam@features.heatmap"), want["gradcam"].heatmap)


def test_v1_predict_and_explain(served):
    url, e = served
    x = images(1, seed=2)
    shown = np.clip(x[0], 0, 1)
    status, body = post(f"{url}/v1/models/shapes:predict", {"instances": [{"image": {"b64": png_b64(shown)}}]})
    assert status == 200
    service = Service(e.path, providers="cpu")
    _, model_input = service.image({"image": {"b64": png_b64(shown)}})
    logits = e.explainer.explain(model_input[None], ["saliency"]).logits[0]
    prediction = body["predictions"][0]
    assert np.array_equal(np.float32(prediction["logits"]), logits)
    assert [c["class"] for c in prediction["top"]] == list(np.argsort(-logits, kind="stable")[:5])
    assert prediction["top"][0]["label"] == e.info.class_names[int(logits.argmax())]
    status, body = post(f"{url}/v1/models/shapes:explain",
                        {"instances": [{"image": x[0].tolist(), "target": 1, "methods": ["gradcam", "saliency"]}]})
    assert status == 200
    found = body["explanations"][0]
    want = e.explainer.explain(x, ["gradcam", "saliency"], 1)
    assert found["target"] == 1 and found["label"] == e.info.class_names[1]
    assert np.array_equal(np.float32(found["maps"]["gradcam@features"]["heatmap"]), want["gradcam"].heatmap[0])
    assert np.array_equal(np.float32(found["maps"]["saliency"]["heatmap"]), want["saliency"].heatmap[0])


def test_plain_onnx_classifier_is_served_with_the_any_onnx_methods(served_plain):
    url, path = served_plain
    x = images(2, size=16, seed=3)
    inputs = [tensor("images", x, "FP32", True)]
    outputs = [triton.InferRequestedOutput("occlusion.heatmap"), triton.InferRequestedOutput("occlusion.grid"),
               triton.InferRequestedOutput("logits")]
    result = client(url).infer("plain", inputs, outputs=outputs, parameters={"window": 4, "stride": 2})
    want = ox.explain(path, x, "occlusion", window=4, stride=2)
    np.testing.assert_array_equal(result.as_numpy("occlusion.heatmap"), want["occlusion"].heatmap)
    np.testing.assert_array_equal(result.as_numpy("occlusion.grid"), want["occlusion"].grid)
    np.testing.assert_array_equal(result.as_numpy("logits"), want.logits)
    status, body = post(f"{url}/v1/models/plain:explain",
                        {"instances": [{"image": x[0].tolist(), "methods": ["eigencam"]}]})
    assert status == 200 and np.float32(body["explanations"][0]["maps"]["eigencam@act"]["heatmap"]).shape == (16, 16)


def _v2(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


BAD = [
    ("malformed JSON", "v2", b"{\"inputs\": [", 422, "JSON decode error"),
    ("wrong shape", "v2", {"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32",
                                       "data": [0.0] * 192}]}, 400, "images must be float32 [N, 3, 64, 64]"),
    ("wrong datatype", "v2", {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "INT64",
                                          "data": [0] * 12288}]}, 400, "dtype int64"),
    ("NaN image", "v2", {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32",
                                     "data": [float("nan")] * 12288}]}, 400, "NaN"),
    ("unknown input", "v2", {"inputs": [{"name": "pictures", "shape": [1], "datatype": "FP32", "data": [0.0]}]},
     400, "unknown inputs ['pictures']"),
    ("unknown output", "v2", {**_v2(np.zeros((1, 3, 64, 64), np.float32)), "outputs": [{"name": "nope.heatmap"}]},
     400, "unknown outputs ['nope.heatmap']"),
    ("target out of range", "v2", {"inputs": [*_v2(np.zeros((1, 3, 64, 64), np.float32))["inputs"],
                                              {"name": "targets", "shape": [1], "datatype": "INT64", "data": [9]}]},
     400, "out of range"),
    ("bytes not an image", "v1", {"instances": [{"image": {"b64": base64.b64encode(b"not an image").decode()}}]},
     400, "must hold a PNG or JPEG"),
    ("not base64", "v1", {"instances": [{"image": {"b64": "%%%"}}]}, 400, "not valid base64"),
    ("unknown method", "v1:explain", {"instances": [{"image": np.zeros((3, 64, 64)).tolist(), "methods": ["nope"]}]},
     400, "unknown methods ['nope']"),
    ("no instances", "v1", {"instances": []}, 400, "at least one instance"),
    ("too large", "v1", {"instances": [{"image": {"b64": "A" * (2 * 2**20)}}]}, 413, "at most"),
]


@pytest.mark.parametrize(("case", "endpoint", "body", "status", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_a_4xx_and_the_server_goes_on(served, case, endpoint, body, status, fragment):
    url, e = served
    path = {"v2": "/v2/models/shapes/infer", "v1": "/v1/models/shapes:predict",
            "v1:explain": "/v1/models/shapes:explain"}[endpoint]
    got, reply = post(url + path, body)
    assert got == status, (case, reply)
    assert fragment in json.dumps(reply), (case, reply)
    ok, _ = post(f"{url}/v2/models/shapes/infer", _v2(images(1)))
    assert ok == 200, f"the server stopped serving after {case}"


def test_unknown_model_is_404(served):
    url, _ = served
    status, reply = post(f"{url}/v2/models/other/infer", _v2(images(1)))
    assert status == 404 and "other" in reply["error"]
