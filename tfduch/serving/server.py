"""The model server: TF Serving's gRPC services (and its REST API, see ``rest.py``) over :mod:`models`.

``PredictionService.Predict`` / ``GetModelMetadata`` and ``ModelService.GetModelStatus`` use the
``tensorflow_serving.apis`` protos unchanged, so any TF Serving client (ours included) talks to it.
``Classify``, ``Regress``, ``MultiInference`` and ``HandleReloadConfigRequest`` answer UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from tfduch.serving import ServingError, StatusCode
from tfduch.serving.batching import BatchingOptions, BatchScheduler
from tfduch.serving.models import ModelManager, ModelSource, RequestLimits, Servable, SignatureRunner
from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

__all__ = ["ServerOptions", "ServingCore", "ModelServer", "PredictionServicer", "ModelServicer", "model_metadata",
           "model_status", "single_model_options"]

log = logging.getLogger("tfduch.serving")

SIGNATURE_DEF_FIELD = "signature_def"
_ERROR_CODE_ENUM = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State
# No message size limit (TF Serving sets INT_MAX: a batch of images is easily over gRPC's 4 MiB), and no
# SO_REUSEPORT: a second server on a taken port must fail instead of silently sharing its traffic.
_GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)]


@dataclass
class ServerOptions:
    """Everything ``tfduch serve`` configures (flag names follow ``tensorflow_model_server``).

    Ports: ``0`` picks a free port (read it back from :class:`ModelServer`); ``rest_api_port=-1``
    disables REST. ``file_system_poll_wait_seconds <= 0`` loads once and never polls again.
    """

    models: list[ModelSource]
    host: str = "0.0.0.0"
    port: int = 8500
    rest_api_port: int = 8501
    file_system_poll_wait_seconds: float = 1.0
    enable_batching: bool = False
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: RequestLimits = field(default_factory=RequestLimits)
    grpc_max_threads: int = 64

    def get_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["models"] = [{"name": m.name, "base_path": str(m.base_path), "policy": str(m.policy)}
                            for m in self.models]
        return config


class ServingCore:
    """What both front ends share: find the version and signature, validate, (batch and) run."""

    def __init__(self, manager: ModelManager, batcher: BatchScheduler | None = None) -> None:
        self.manager = manager
        self.batcher = batcher

    def runner(self, model: str, version: int | None, signature: str) -> tuple[Servable, SignatureRunner]:
        servable = self.manager.get(model, version)
        return servable, servable.runner(signature)

    def predict(self, model: str, version: int | None, signature: str, inputs: Mapping[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> tuple[Servable, str, dict[str, np.ndarray]]:
        """(version served, signature name, outputs) for one request; raises :class:`ServingError`."""
        servable, runner = self.runner(model, version, signature)
        unknown = [name for name in output_filter if name not in runner.outputs]
        if unknown:
            raise ServingError(StatusCode.INVALID_ARGUMENT, (
                f"output tensor alias not found in signature: {', '.join(unknown)}; signature "
                f"'{runner.name}' has outputs {sorted(runner.outputs)}"))
        size = runner.validate(inputs)
        if self.batcher is not None:
            outputs = self.batcher.run(runner, inputs, size)
        else:
            outputs = runner.run(inputs)
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return servable, runner.name, outputs


def _version(spec: Any) -> int | None:
    if spec.version_label:
        raise ServingError(StatusCode.INVALID_ARGUMENT, (
            f"Unrecognized servable version label: {spec.version_label} (labels are not configured here)"))
    return spec.version.value if spec.HasField("version") else None


def _abort(context: grpc.ServicerContext, exc: ServingError) -> None:
    context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)


def tensor_to_array(name: str, proto: Any) -> np.ndarray:
    try:
        return tensor_proto_to_array(proto)
    except Exception as exc:  # noqa: BLE001 - any malformed TensorProto is the caller's fault
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input '{name}' is not a valid TensorProto: {exc}") from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            spec = request.model_spec
            inputs = {name: tensor_to_array(name, proto) for name, proto in request.inputs.items()}
            servable, signature, outputs = self.core.predict(
                spec.name, _version(spec), spec.signature_name, inputs, list(request.output_filter))
        except ServingError as exc:
            _abort(context, exc)
            return None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(array_to_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            return model_metadata(self.core.manager, request)
        except ServingError as exc:
            _abort(context, exc)
            return None


def model_metadata(manager: ModelManager, request: Any) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """TF Serving's GetModelMetadata: the version's SignatureDefMap packed in an ``Any``.

    Extension: any other field ``F`` is answered with the version's ``assets.extra/F.json`` as a
    ``google.protobuf.StringValue`` (``tfduch_metadata`` for tfduch exports). A real TF Serving answers
    such fields with INVALID_ARGUMENT, as we do when the file is absent, so clients can fall back.
    """
    if not request.metadata_field:
        raise ServingError(StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    servable = manager.get(request.model_spec.name, _version(request.model_spec))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    for name in request.metadata_field:
        if name == SIGNATURE_DEF_FIELD:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response.metadata[name].Pack(signature_map)
        elif name in servable.extra_metadata:
            response.metadata[name].Pack(wrappers_pb2.StringValue(value=servable.extra_metadata[name]))
        else:
            available = [SIGNATURE_DEF_FIELD, *sorted(servable.extra_metadata)]
            raise ServingError(StatusCode.INVALID_ARGUMENT,
                               f"Metadata field {name} is not supported (this model has: {', '.join(available)})")
    return response


def model_status(manager: ModelManager, request: Any) -> get_model_status_pb2.GetModelStatusResponse:
    """TF Serving's GetModelStatus: state and load status of one or all versions, newest first."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for state in manager.status(request.model_spec.name, _version(request.model_spec)):
        entry = response.model_version_status.add()
        entry.version = state.version
        entry.state = _STATE_ENUM.Value(state.state)
        entry.status.error_code = _ERROR_CODE_ENUM.values_by_name[state.error_code].number
        entry.status.error_message = state.error_message
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus (config reloads are not supported)."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            return model_status(self.core.manager, request)
        except ServingError as exc:
            _abort(context, exc)
            return None


class ModelServer:
    """gRPC + REST front ends, the model manager and (optionally) the batch scheduler, in one process.

    >>> server = ModelServer(ServerOptions([ModelSource("tfduch", Path("/exports/tfduch"))], port=0)).start()
    >>> server.grpc_address   # '0.0.0.0:41231'
    >>> server.stop()
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.manager = ModelManager(options.models, options.file_system_poll_wait_seconds, options.limits)
        self.batcher: BatchScheduler | None = None
        self.core = ServingCore(self.manager)
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._rest: Any = None
        self._stopped = threading.Event()

    @property
    def grpc_address(self) -> str:
        return f"{self.options.host}:{self.grpc_port}"

    def start(self) -> ModelServer:
        """Load the current versions, then listen; returns once both front ends accept requests."""
        self.manager.start()
        for source in self.options.models:
            if not self.manager.loaded_versions(source.name):
                log.warning("model %s: no loadable version under %s yet; polling", source.name, source.base_path)
        if self.options.enable_batching:
            self.batcher = self.core.batcher = BatchScheduler(self.options.batching)
        try:
            self._start_grpc()
            if self.options.rest_api_port >= 0:
                from tfduch.serving.rest import RestServer

                self._rest = RestServer(self.core, self.options.host, self.options.rest_api_port).start()
                self.rest_port = self._rest.port
                log.info("REST API listening on http://%s:%d/v1/models/...", self.options.host, self.rest_port)
        except BaseException:
            self.stop(grace=None)
            raise
        return self

    def _start_grpc(self) -> None:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                                            thread_name_prefix="tfduch-grpc"),
                                 options=_GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.core), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.core), self._grpc)
        address = f"{self.options.host}:{self.options.port}"
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises when the port is taken
            raise OSError(f"cannot bind gRPC to {address} (port in use?): {exc}") from None
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC to {address} (port in use?)")
        self._grpc.start()
        log.info("gRPC (PredictionService, ModelService) listening on %s", self.grpc_address)

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` s), stop polling."""
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if self.batcher is not None:
            self.batcher.stop()
            stats = self.batcher.stats()
            log.info("batching: %d requests (%d items) in %d batches, mean %.1f items, largest %d, %d re-runs",
                     stats["tasks"], stats["items"], stats["batches"], stats["items"] / max(1, stats["batches"]),
                     stats["largest_batch"], stats["fallbacks"])
        self.manager.stop()
        self._stopped.set()

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stopped.wait(0.5):
            pass

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def single_model_options(model_name: str, base_path: str | Path, **kwargs: Any) -> ServerOptions:
    """Options serving one model (TF Serving's ``--model_name`` + ``--model_base_path``)."""
    policy = kwargs.pop("policy", None)
    source = ModelSource(model_name, Path(base_path)) if policy is None else \
        ModelSource(model_name, Path(base_path), policy)
    return ServerOptions(models=[source], **kwargs)
