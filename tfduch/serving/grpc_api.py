"""The gRPC front end: TF Serving's ``PredictionService`` and ``ModelService`` over :mod:`core`.

``Predict`` / ``GetModelMetadata`` / ``GetModelStatus`` use the ``tensorflow_serving.apis`` protos
unchanged, so any TF Serving client (ours included) talks to it. ``HandleReloadConfigRequest``
replaces the served models; ``Classify``, ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED. With
an SSL config the port speaks TLS, and mutual TLS when ``client_verify`` is set, as
``tensorflow_model_server --ssl_config_file``.
"""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfduch.errors import ConfigError
from tfduch.serving.configs import SslOptions
from tfduch.serving.core import ModelSpec, ServingCore, model_metadata, model_status
from tfduch.serving.errors import ServingError, StatusCode
from tfduch.serving.models import sources_from_config
from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

__all__ = ["GRPC_OPTIONS", "PredictionServicer", "ModelServicer", "start_grpc_server", "tensor_to_array"]

log = logging.getLogger("tfduch.serving")

# No message size limit (TF Serving sets INT_MAX: a batch of images is easily over gRPC's 4 MiB), and no
# SO_REUSEPORT: a second server on a taken port must fail instead of silently sharing its traffic.
GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0)]


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
        spec = ModelSpec.from_proto(request.model_spec)
        try:
            try:
                inputs = {name: tensor_to_array(name, proto) for name, proto in request.inputs.items()}
            except ServingError as exc:  # counted like any other failed request
                self.core.record_failure(spec, exc.code, "GRPC")
                raise
            servable, signature, outputs = self.core.predict(spec, inputs, list(request.output_filter), "GRPC")
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
            return model_metadata(self.core.manager, ModelSpec.from_proto(request.model_spec),
                                  list(request.metadata_field))
        except ServingError as exc:
            _abort(context, exc)
            return None


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest.

    A reload replaces the served models with the request's ``model_config_list`` (as TF Serving; relative
    base paths resolve against the working directory). A ``--model_config_file`` that is re-read later wins.
    """

    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            return model_status(self.core.manager, ModelSpec.from_proto(request.model_spec))
        except ServingError as exc:
            _abort(context, exc)
            return None

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ConfigError("ReloadConfigRequest needs config.model_config_list")
            sources = sources_from_config(request.config, "ReloadConfigRequest", Path.cwd())
        except ConfigError as exc:
            _abort(context, ServingError(StatusCode.INVALID_ARGUMENT, str(exc)))
            return None
        log.info("ReloadConfigRequest: serving %s", ", ".join(s.name for s in sources))
        self.core.manager.update_sources(sources)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0  # OK
        return response


def server_credentials(ssl: SslOptions) -> grpc.ServerCredentials:
    """TLS for the gRPC port; ``client_verify`` makes it mutual (clients need a cert signed by ``custom_ca``)."""
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=ssl.client_verify)


def start_grpc_server(core: ServingCore, address: str, max_threads: int,
                      ssl: SslOptions | None = None) -> tuple[grpc.Server, int]:
    """A started gRPC server with both services on ``address``; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="tfduch-grpc"),
                         options=GRPC_OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    try:
        if ssl is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(ssl))
    except RuntimeError as exc:  # grpc raises when the port is taken
        raise OSError(f"cannot bind gRPC to {address} (port in use?): {exc}") from None
    if not port:
        raise OSError(f"cannot bind gRPC to {address} (port in use?)")
    server.start()
    log.info("gRPC (PredictionService, ModelService%s) listening on %s", ", TLS" if ssl else "", address)
    return server, port
