"""TF Serving's REST API, sharing the gRPC front end's core, on uvicorn (a production ASGI server).

The standard library's ``http.server`` says of itself that it is not for production; the routes here
are a Starlette app served by uvicorn in-process on its own thread. Routes (as
``tensorflow_model_server --rest_api_port``; ``/labels/<label>`` wherever ``/versions/<v>`` may stand)::

    POST /v1/models/<name>[/versions/<v>]:predict   {"signature_name": s, "instances": [...]} → {"predictions": [...]}
                                                    {"signature_name": s, "inputs": ...}      → {"outputs": ...}
    GET  /v1/models/<name>[/versions/<v>]           GetModelStatus as JSON
    GET  /v1/models/<name>[/versions/<v>]/metadata  GetModelMetadata as JSON
    GET  /monitoring/prometheus/metrics             Prometheus metrics (with a monitoring config)

Binary strings travel as ``{"b64": "..."}`` both ways (outputs only when the output name ends in
``_bytes``, as TF Serving does). Errors are ``{"error": "..."}`` with TF Serving's HTTP code for the
status (INVALID_ARGUMENT → 400, NOT_FOUND → 404, UNAVAILABLE → 503, ...).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from tfduch.serving.core import SIGNATURE_DEF_FIELD, ModelSpec, ServingCore, model_metadata, model_status
from tfduch.serving.errors import HTTP_STATUS, ServingError, StatusCode
from tfduch.serving.metrics import CONTENT_TYPE_LATEST, MonitoringOptions, ServingMetrics

__all__ = ["RestApi", "RestServer", "HTTP_STATUS", "json_to_array", "array_to_json"]

log = logging.getLogger("tfduch.serving")

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?::(?P<method>[a-z]+)|/(?P<sub>metadata))?$", re.IGNORECASE)
_MAX_BODY = 512 << 20


def _bad(message: str) -> ServingError:
    return ServingError(StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------------------------------
# JSON ⇄ arrays
# --------------------------------------------------------------------------------------------------
def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _dense_shape(value: Any) -> list[int]:
    shape, item = [], value
    while isinstance(item, list):
        shape.append(len(item))
        if not item:
            break
        item = item[0]
    return shape


def _flatten(value: Any, shape: list[int], level: int, out: list[Any], where: str) -> None:
    if level == len(shape):
        if isinstance(value, list):
            raise _bad(f"{where}: nested lists are ragged (expected shape {shape})")
        out.append(value)
        return
    if not isinstance(value, list) or len(value) != shape[level]:
        raise _bad(f"{where}: nested lists are ragged (expected shape {shape})")
    for item in value:
        _flatten(item, shape, level + 1, out, where)


def _to_bytes(item: Any, where: str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"{where}: string is not valid UTF-8 (send binary data as {{\"b64\": ...}})") from None
    if _is_b64(item):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _bad(f"{where}: invalid base64 in {{\"b64\": ...}}") from None
    raise _bad(f"{where}: expected a string or {{\"b64\": ...}}, got {type(item).__name__} {json.dumps(item)[:60]}")


def json_to_array(value: Any, dtype: tf.DType, where: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of ``dtype``; errors name ``where``."""
    shape = _dense_shape(value)
    flat: list[Any] = []
    _flatten(value, shape, 0, flat, where)
    if dtype == tf.string:
        array = np.empty(len(flat), dtype=object)
        array[:] = [_to_bytes(item, where) for item in flat]
        return array.reshape(shape)
    kinds = {type(item) for item in flat}
    if not kinds <= {int, float, bool}:
        odd = next(item for item in flat if type(item) not in (int, float, bool))
        raise _bad(f"{where}: expected {dtype.name} numbers, got {type(odd).__name__} {json.dumps(odd)[:60]}")
    if dtype.is_integer and float in kinds:
        raise _bad(f"{where}: expected {dtype.name} integers, got a float")
    if dtype == tf.bool and kinds - {bool}:
        raise _bad(f"{where}: expected true/false")
    raw = np.array(flat)
    array = raw.astype(dtype.as_numpy_dtype).reshape(shape)
    if dtype.is_integer and raw.size and not np.array_equal(array.ravel().astype(raw.dtype), raw):
        raise _bad(f"{where}: a value is out of range for {dtype.name}")
    return array


def _leaf_json(item: Any, name: str) -> Any:
    if isinstance(item, bytes):
        if not name.endswith("_bytes"):
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(item).decode("ascii")}
    if isinstance(item, list):
        return [_leaf_json(x, name) for x in item]
    return item


def array_to_json(array: np.ndarray, name: str) -> Any:
    """An output array as JSON (bytes as UTF-8 text, or ``{"b64": ...}`` for ``*_bytes`` outputs)."""
    value = array.tolist()
    return _leaf_json(value, name) if array.dtype == object or array.dtype.kind == "S" else value


def _instances_to_inputs(instances: Any, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Row format: one JSON item per example, plain values for a one-input signature, else objects."""
    if not isinstance(instances, list):
        raise _bad("Excepting 'instances' to be an list/array")
    if not instances:
        raise _bad("No values in 'instances' array (empty batch)")
    as_objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not as_objects and len(specs) > 1:
        raise _bad("instances is a plain list, but expecting list of objects as multiple input tensors required "
                   f"(inputs: {sorted(specs)})")
    columns: dict[str, list[Any]] = {name: [] for name in specs}
    for i, row in enumerate(instances):
        if as_objects:
            if not isinstance(row, dict) or _is_b64(row):
                raise _bad(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(specs):
                raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object keys "
                           f"{sorted(row)} must be equal to: {sorted(specs)}")
            for name in specs:
                columns[name].append(row[name])
        else:
            if isinstance(row, dict) and not _is_b64(row):
                raise _bad(f"Expecting value/list but got object at item {i} of input list")
            columns[next(iter(specs))].append(row)
    return {name: json_to_array(values, specs[name].dtype, f"instances, input '{name}'")
            for name, values in columns.items()}


def _columnar_to_inputs(inputs: Any, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Columnar format: one value for a one-input signature, else an object of named values."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        missing = [name for name in specs if name not in inputs]
        if missing:
            raise _bad(f"Missing named input: {missing[0]} in 'inputs' object (inputs: {sorted(specs)})")
        extra = [name for name in inputs if name not in specs]
        if extra:
            raise _bad(f"Unexpected named input: {extra[0]} in 'inputs' object (inputs: {sorted(specs)})")
        return {name: json_to_array(inputs[name], specs[name].dtype, f"inputs, input '{name}'") for name in specs}
    if len(specs) != 1:
        raise _bad("inputs is a plain value/list, but expecting an object as multiple input tensors required "
                   f"(inputs: {sorted(specs)})")
    name = next(iter(specs))
    return {name: json_to_array(inputs, specs[name].dtype, f"inputs, input '{name}'")}


def _rows_json(outputs: Mapping[str, np.ndarray]) -> list[Any]:
    sizes = {name: (value.shape[0] if value.ndim else None) for name, value in outputs.items()}
    batch = next(iter(sizes.values()), None)
    for name, size in sizes.items():
        if size is None or size != batch:
            raise _bad(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch} "
                       "(use the columnar 'inputs' format for this signature)")
    if len(outputs) == 1:
        name, value = next(iter(outputs.items()))
        return array_to_json(value, name)
    columns = {name: array_to_json(value, name) for name, value in outputs.items()}
    return [{name: columns[name][i] for name in outputs} for i in range(batch or 0)]


# --------------------------------------------------------------------------------------------------
# HTTP: TF Serving's routes as a Starlette app, served by uvicorn
# --------------------------------------------------------------------------------------------------
class RestApi:
    """TF Serving's REST routes over a :class:`ServingCore` (framework-free: ``dispatch`` is plain Python)."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """(HTTP status, JSON payload) of one request; never raises."""
        try:
            return 200, self._handle(method, path, body)
        except ServingError as exc:
            return HTTP_STATUS.get(exc.code, 500), {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            log.exception("REST request %s %s failed", method, path)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}

    def _handle(self, method: str, path: str, body: bytes) -> Any:
        match = _PATH.match(path)
        if match is None:
            raise ServingError(StatusCode.NOT_FOUND if not path.startswith("/v1/models") else
                               StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        verb, sub = match["method"], match["sub"]
        version = None
        if match["version"] is not None:
            if not match["version"].isdigit():
                raise _bad(f"Malformed request: {method} {path} (version must be an integer)")
            version = int(match["version"])
        spec = ModelSpec(match["name"], version, match["label"] or "")
        if method == "POST" and verb == "predict" and sub is None:
            return self._predict(spec, body)
        if method == "POST" and verb in ("classify", "regress"):
            raise ServingError(StatusCode.UNIMPLEMENTED, f"{verb} is not served here; use :predict")
        if method == "GET" and verb is None:
            if sub:
                return _proto_json(model_metadata(self.core.manager, spec, [SIGNATURE_DEF_FIELD]))
            return _proto_json(model_status(self.core.manager, spec))
        raise _bad(f"Malformed request: {method} {path}")

    def _predict(self, spec: ModelSpec, body: bytes) -> Any:
        try:
            doc = self._parse(body)
            signature = doc.get("signature_name", "")
            if not isinstance(signature, str):
                raise _bad("'signature_name' key must be a string value")
            spec = ModelSpec(spec.name, spec.version, spec.label, signature)
            if ("instances" in doc) == ("inputs" in doc):
                raise _bad("Missing 'inputs' or 'instances' key" if "inputs" not in doc else
                           "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
            _, runner = self.core.runner(spec)
            if "instances" in doc:
                inputs = _instances_to_inputs(doc["instances"], runner.inputs)
            else:
                inputs = _columnar_to_inputs(doc["inputs"], runner.inputs)
        except ServingError as exc:  # refused before it reached the core: counted all the same
            self.core.record_failure(spec, exc.code, "REST")
            raise
        _, _, outputs = self.core.predict(spec, inputs, entrypoint="REST")
        if "instances" in doc:
            return {"predictions": _rows_json(outputs)}
        if len(outputs) == 1:
            only_name, value = next(iter(outputs.items()))
            return {"outputs": array_to_json(value, only_name)}
        return {"outputs": {key: array_to_json(value, key) for key, value in outputs.items()}}

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        if not body:
            raise _bad("JSON Parse error: The document is empty")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"JSON Parse error: {exc}") from None
        if not isinstance(doc, dict):
            raise _bad("JSON Value is not an object")
        return doc


def _proto_json(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def build_app(api: RestApi, metrics: ServingMetrics | None = None,
              monitoring: MonitoringOptions | None = None) -> Any:
    """The Starlette app: the Prometheus route (when enabled), then every other path to :class:`RestApi`."""
    monitoring = monitoring or MonitoringOptions()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def reply(status: int, payload: Any) -> Response:
        return Response(json.dumps(payload).encode("utf-8"), status_code=status, media_type="application/json")

    async def handle(request: Request) -> Response:
        length = request.headers.get("content-length") or "0"
        if not length.isdigit() or int(length) > _MAX_BODY:
            return reply(400, {"error": f"invalid Content-Length {length!r} (limit {_MAX_BODY} bytes)"})
        body = await request.body()
        # The model runs in a worker thread: the event loop keeps accepting while TensorFlow computes.
        status, payload = await run_in_threadpool(api.dispatch, request.method, request.url.path, body)
        return reply(status, payload)

    async def prometheus(request: Request) -> Response:
        assert metrics is not None
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes = []
    if monitoring.enable and metrics is not None:
        routes.append(Route(monitoring.path, prometheus, methods=["GET"]))
    routes.append(Route("/{path:path}", handle, methods=["GET", "POST"]))
    return Starlette(routes=routes)


class RestServer:
    """uvicorn serving :func:`build_app` in-process on its own thread (and event loop)."""

    def __init__(self, core: ServingCore, host: str, port: int, metrics: ServingMetrics | None = None,
                 monitoring: MonitoringOptions | None = None) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise OSError(f"cannot bind REST to {host}:{port} (port in use?): {exc}") from None
        self.port = int(self._socket.getsockname()[1])
        app = build_app(RestApi(core), metrics, monitoring)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="tfduch-rest", daemon=True)

    def start(self, timeout: float = 30.0) -> RestServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"REST server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
