"""The server's other modes, started for real: the Open Inference Protocol over gRPC (tritonclient's gRPC
client), and --workers 2 (KServe spawns the processes; each has the page, the size limit and its own
ONNX Runtime session)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as triton_grpc
from servers import get, post

from onnx_explain.serving.process import free_port, running_server


def test_grpc_infer_equals_the_explainer(exported):
    e = exported("shapenet")
    port = free_port()
    with running_server(e.path, "--name", "shapes", "--grpc-port", str(port)):
        client = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_model_ready("shapes")
        x = np.random.default_rng(5).random((2, 3, 64, 64), dtype=np.float32)
        images = triton_grpc.InferInput("images", list(x.shape), "FP32")
        images.set_data_from_numpy(x)
        outputs = [triton_grpc.InferRequestedOutput(n) for n in ("logits", "gradcam@features.heatmap")]
        result = client.infer("shapes", [images], outputs=outputs)
        want = e.explainer.explain(x, ["gradcam"])
        np.testing.assert_array_equal(result.as_numpy("logits"), want.logits)
        np.testing.assert_array_equal(result.as_numpy("gradcam@features.heatmap"), want["gradcam"].heatmap)


def test_two_workers_serve_the_page_the_limit_and_the_model(exported):
    e = exported("shapenet")
    with running_server(e.path, "--name", "shapes", "--workers", "2", "--max-body-mb", "1") as url:
        status, page = get(f"{url}/")
        assert status == 200 and b"onnx-explain" in page
        x = np.random.default_rng(6).random((1, 3, 64, 64), dtype=np.float32)
        body = {"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32",
                            "data": x.ravel().tolist()}], "outputs": [{"name": "logits"}]}
        for _ in range(4):  # requests land on both processes
            status, reply = post(f"{url}/v2/models/shapes/infer", body)
            assert status == 200, reply
            np.testing.assert_allclose(reply["outputs"][0]["data"], e.explainer.explain(x, ["gradcam"]).logits.ravel())
        status, reply = post(f"{url}/v1/models/shapes:predict", {"instances": [{"image": {"b64": "A" * 2**21}}]})
        assert status == 413 and "at most" in reply["error"]
