"""`onnx-explain serve`: explanations over the protocols inference platforms speak, on KServe's
ModelServer (the `serve` extra).

KServe owns the protocols: the Open Inference Protocol (V2) over REST with its binary tensor extension,
and gRPC when a port is given; KServe V1 :predict and :explain; health, readiness, Prometheus metrics
and request logs.  ExplanationModel maps them onto a Service (service.py), and adds a browser page at
GET / and a request size limit (HTTP 413).
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from pathlib import Path

import kserve
from fastapi.responses import HTMLResponse, JSONResponse
from kserve import InferOutput, InferRequest, InferResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane

from onnx_explain.serving.page import page_html
from onnx_explain.serving.service import DATATYPES, Service

# KServe's per-request log lines: the access log and the timing middleware's trace.
QUIET_LOGGERS = ("uvicorn.access", "kserve.trace")


class ExplanationModel(kserve.Model):
    """A kserve.Model over a Service: V2 infer and V1 predict run `predict`, V1 explain runs `explain`.
    The work runs in a thread, so the event loop keeps answering health checks and other requests."""

    def __init__(self, name: str, path: str | Path, *, providers=None, max_body_bytes: int = 32 * 2**20) -> None:
        super().__init__(name)
        self.path, self.providers, self.max_body_bytes = Path(path), providers, max_body_bytes
        self.service = Service(self.path, providers=providers)
        self.ready = True

    def __getstate__(self) -> dict:
        """With --workers N, KServe pickles the model into N spawned processes: the ONNX Runtime session
        stays behind and each process opens its own."""
        return {k: v for k, v in self.__dict__.items() if k != "service"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.service = Service(self.path, providers=self.providers)
        install_page_and_limit(self)  # on the spawned process's own copy of KServe's app

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [s.as_dict() for s in self.service.inputs()]

    def get_output_types(self) -> list[dict]:
        return [s.as_dict() for s in self.service.outputs()]

    async def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            return await self._run(self._infer, payload)
        return await self._run(self.service.predict, payload)

    async def explain(self, payload, headers=None):
        return await self._run(self.service.explain, payload)

    def _infer(self, request: InferRequest) -> InferResponse:
        inputs = {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise ValueError(f"input {tensor.name!r} is given twice")
            inputs[tensor.name] = tensor.as_numpy()
        wanted = [o.name for o in request.request_outputs or ()]
        values = self.service.infer(inputs, wanted or None, request.parameters)
        outputs = []
        for name, value in values.items():
            out = InferOutput(name=name, shape=list(value.shape), datatype=DATATYPES[value.dtype])
            out.set_data_from_numpy(value, binary_data=True)  # raw bytes: to_rest turns them to JSON if asked
            outputs.append(out)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs,
                             use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)

    async def _run(self, fn, payload):
        try:
            return await asyncio.get_running_loop().run_in_executor(None, partial(fn, payload))
        except (ValueError, TypeError) as e:  # a bad request: HTTP 400 with {"error": ...}
            raise InvalidInput(str(e)) from e


class RawTensorDataPlane(DataPlane):
    """KServe's DataPlane, with binary tensors kept as bytes until the model reads them as numpy arrays.
    InferRequest.from_bytes turns each binary input into a Python list on the event loop, which for an
    image costs more than the model's run (docs/performance.md); here it parses the JSON header alone,
    and the inputs are given their bytes after.  A body without Inference-Header-Content-Length is all
    JSON header (tritonclient sends JSON-only requests with no content type, which KServe reads as bytes)."""

    def decode_inference_request(self, body, headers, model_name):
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER, str(len(body)))
        if not length.isdigit():
            return super().decode_inference_request(body, headers, model_name)
        try:
            header = json.loads(body[:int(length)])
            inputs = header["inputs"]
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"Unrecognized request format: {e}") from e
        raw, start = {}, int(length)
        for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
            size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor, dict) else None
            if isinstance(size, int) and "data" not in tensor:
                raw[i], start = body[start:start + size], start + size
                tensor["data"] = []
                tensor["parameters"] = {k: v for k, v in tensor["parameters"].items() if k != "binary_data_size"}
        text = json.dumps(header).encode()
        request = InferRequest.from_bytes(text, len(text), model_name)
        for i, data in raw.items():
            request.inputs[i]._raw_data = data  # as_numpy reads these with np.frombuffer
        return request


def build_server(path: str | Path, *, name: str | None = None, host: str = "127.0.0.1", http_port: int = 8080,
                 grpc_port: int | None = None, workers: int = 1, max_body_bytes: int = 32 * 2**20,
                 providers=None) -> tuple[kserve.ModelServer, ExplanationModel]:
    """(kserve.ModelServer, ExplanationModel) for a file, with the page and the size limit installed on
    KServe's application; `server.start([model])` serves until interrupted."""
    path = Path(path)
    model = ExplanationModel(name or path.stem, path, providers=providers, max_body_bytes=max_body_bytes)
    install_page_and_limit(model)
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=grpc_port is not None,
                                workers=workers)
    server.dataplane = RawTensorDataPlane(model_registry=server.registered_models)
    _listen_on(host)
    return server, model


def serve(path: str | Path, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8080,
          grpc_port: int | None = None, workers: int = 1, max_body_bytes: int = 32 * 2**20, providers=None,
          quiet: bool = False) -> None:
    """Serve a file until interrupted (`onnx-explain serve`); `quiet` drops the per-request access and
    timing log lines (errors are still logged)."""
    server, model = build_server(path, name=name, host=host, http_port=port, grpc_port=grpc_port, workers=workers,
                                 max_body_bytes=max_body_bytes, providers=providers)
    if quiet:
        for logger in QUIET_LOGGERS:
            logging.getLogger(logger).setLevel(logging.WARNING)
    server.start([model])


def _listen_on(host: str) -> None:
    """KServe's REST server binds every interface (0.0.0.0); bind it to `host`, loopback by default."""
    from kserve.protocol.rest import server as rest

    if getattr(rest.uvicorn.Config, "_onnx_explain_host", None) is None:
        original = rest.uvicorn.Config.__init__

        def config(self, *args, **kwargs):
            kwargs["host"] = rest.uvicorn.Config._onnx_explain_host
            original(self, *args, **kwargs)

        rest.uvicorn.Config.__init__ = config
    rest.uvicorn.Config._onnx_explain_host = host


def install_page_and_limit(model: ExplanationModel) -> None:
    """GET / (the browser page) and the body size limit, on the app KServe serves (kserve.model_server.app).
    Routes added here come before KServe's own "/" (its liveness answer, also at /v2/health/live)."""
    from kserve.model_server import app

    page = page_html(model.name, model.service)
    limit = model.max_body_bytes

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.middleware("http")
    async def limit_body(request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            async for _ in request.stream():  # discarded as it arrives: a client still sending would see a reset
                pass
            return _too_large(int(declared), limit)
        if request.method in ("POST", "PUT") and declared is None:
            body = await request.body()  # chunked: read it to measure it (starlette keeps it for the route)
            if len(body) > limit:
                return _too_large(len(body), limit)
        return await call_next(request)


def _too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse(status_code=413, content={"error": f"the request body is {size} bytes; this server takes "
                                                           f"at most {limit} (onnx-explain serve --max-body-mb)"})
