"""Load on `onnx-explain serve`: throughput and latency under 1, 8 and 32 concurrent clients.

Starts the real server on a free loopback port and runs each client count for a bounded time; every
client sends one image per request over the Open Inference Protocol's binary tensor extension and asks
for one map.  Prints images/s, p50 and p99 latency and the error count, next to the Explainer called in
process at batch 1 and batch 8 in the same run (the cost the protocol adds).
Run: python bench/serve.py [--model FILE.onnx] [--output gradcam@features.heatmap] [--seconds 10]
(without --model it exports the shipped ShapeNet with gradcam).
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from onnx_explain import Explainer
from onnx_explain.serving.process import running_server


def binary_request(image: np.ndarray, output: str) -> tuple[bytes, dict]:
    """An Open Inference Protocol request with the image as a binary tensor and the output asked in binary."""
    header = json.dumps({"inputs": [{"name": "images", "shape": list(image.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": image.nbytes}}],
                         "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()
    return header + image.tobytes(), {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(header))}


def load(url: str, name: str, image: np.ndarray, output: str, clients: int, seconds: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    body, headers = binary_request(image, output)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                connection.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection = http.client.HTTPConnection(host, int(port), timeout=120)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = sorted(1000 * v for v in latencies)
    return {"images/s": len(ms) / elapsed, "p50 ms": _percentile(ms, 50), "p99 ms": _percentile(ms, 99),
            "errors": errors[0]}


def in_process(path: Path, method: str, image: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of Explainer.explain at this batch size, over about `seconds`."""
    explainer = Explainer(path)
    x = np.repeat(image, batch, axis=0)
    explainer.explain(x, [method])
    runs, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        explainer.explain(x, [method])
        runs += 1
    return runs * batch / (time.perf_counter() - began)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def _shipped(folder: Path) -> Path:
    from onnx_explain.exporters import export_explainer
    from onnx_explain.models.shapenet import INPUT_SHAPE, TARGET_LAYER, load_shapenet
    from onnx_explain.models.shapes import CLASSES

    path = folder / "shapenet.onnx"
    export_explainer(load_shapenet(), path, input_shape=INPUT_SHAPE, layers=[TARGET_LAYER], methods=["gradcam"],
                     class_names=CLASSES)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an exported file (default: ShapeNet, gradcam)")
    parser.add_argument("--output", default="gradcam@features.heatmap", help="the output each request asks for")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count (default 10)")
    parser.add_argument("--quiet", action="store_true", help="serve without per-request log lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or _shipped(Path(tmp))
        explainer = Explainer(path)
        image = np.random.default_rng(0).random((1, *explainer.info.input_shape), dtype=np.float32)
        method = next(m.method for m in explainer.info.maps if args.output in (m.raw, m.heatmap, m.delta))
        rows = {f"in-process, batch {b}": {"images/s": in_process(path, method, image, b, args.seconds)}
                for b in (1, 8)}
        with running_server(path, "--name", "bench", *(["--quiet"] if args.quiet else [])) as url:
            load(url, "bench", image, args.output, 1, 2.0)  # warm-up
            for clients in args.clients:
                rows[f"server, {clients} clients"] = load(url, "bench", image, args.output, clients, args.seconds)
    base = rows["in-process, batch 1"]["images/s"]
    print(f"{path.name}, {args.output}, {args.seconds:.0f} s per row")
    print(f"{'':28s} {'images/s':>9s} {'/ batch 1':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}")
    nan = float("nan")
    for label, row in rows.items():
        print(f"{label:28s} {row['images/s']:9.1f} {row['images/s'] / base:9.2f} {row.get('p50 ms', nan):8.1f} "
              f"{row.get('p99 ms', nan):8.1f} {row.get('errors', 0):6d}")


if __name__ == "__main__":
    main()
