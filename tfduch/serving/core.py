"""The server core that the gRPC and REST front ends share: resolve, validate, (batch and) run, measure.

A front end only translates its wire format into a :class:`ModelSpec` and named numpy arrays, calls
:meth:`ServingCore.predict` / :func:`model_metadata` / :func:`model_status`, and maps a
:class:`~tfduch.serving.errors.ServingError` to its own status; so both answer the same way, and the
metrics count both (``entrypoint`` label ``GRPC`` or ``REST``, as TF Serving).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, status_pb2

from tfduch.serving.batching import BatchScheduler
from tfduch.serving.errors import ServingError, StatusCode
from tfduch.serving.metrics import ServingMetrics
from tfduch.serving.models import ModelManager, Servable, SignatureRunner

__all__ = ["ModelSpec", "ServingCore", "SIGNATURE_DEF_FIELD", "model_metadata", "model_status"]

SIGNATURE_DEF_FIELD = "signature_def"
_ERROR_CODE_ENUM = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State


@dataclass(frozen=True)
class ModelSpec:
    """TF Serving's ``ModelSpec``: a model, at most one of version / label, and a signature."""

    name: str
    version: int | None = None
    label: str = ""
    signature: str = ""

    @classmethod
    def from_proto(cls, spec: Any) -> ModelSpec:
        which = spec.WhichOneof("version_choice")
        return cls(spec.name, spec.version.value if which == "version" else None,
                   spec.version_label if which == "version_label" else "", spec.signature_name)


class ServingCore:
    """What both front ends share: find the version and signature, validate, (batch and) run, count."""

    def __init__(self, manager: ModelManager, batcher: BatchScheduler | None = None,
                 metrics: ServingMetrics | None = None) -> None:
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics

    def servable(self, spec: ModelSpec) -> Servable:
        return self.manager.get(spec.name, spec.version, spec.label)

    def runner(self, spec: ModelSpec) -> tuple[Servable, SignatureRunner]:
        servable = self.servable(spec)
        return servable, servable.runner(spec.signature)

    def predict(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = (),
                entrypoint: str = "GRPC") -> tuple[Servable, str, dict[str, np.ndarray]]:
        """(version served, signature name, outputs) for one request; raises :class:`ServingError`."""
        start = time.perf_counter()
        servable: Servable | None = None
        signature = spec.signature or "serving_default"
        try:
            servable, runner = self.runner(spec)
            signature = runner.name
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
        except ServingError as exc:
            self._observe(spec, servable, signature, exc.code, start, entrypoint)
            raise
        self._observe(spec, servable, signature, StatusCode.OK, start, entrypoint)
        return servable, runner.name, outputs

    def record_failure(self, spec: ModelSpec, code: str, entrypoint: str) -> None:
        """Count a request that a front end refused before it reached :meth:`predict` (unparsable input)."""
        self._observe(spec, None, spec.signature or "serving_default", code, time.perf_counter(), entrypoint)

    def _observe(self, spec: ModelSpec, servable: Servable | None, signature: str, status: str, start: float,
                 entrypoint: str) -> None:
        if self.metrics is not None:
            version = str(servable.version) if servable is not None else (
                str(spec.version) if spec.version is not None else "")
            self.metrics.observe_request(spec.name, version, signature, status, time.perf_counter() - start,
                                         entrypoint)


def model_metadata(manager: ModelManager, spec: ModelSpec, fields: Sequence[str]
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """TF Serving's GetModelMetadata: the version's SignatureDefMap packed in an ``Any``.

    Extension: any other field ``F`` is answered with the version's ``assets.extra/F.json`` as a
    ``google.protobuf.StringValue`` (``tfduch_metadata`` for tfduch exports). A real TF Serving answers
    such fields with INVALID_ARGUMENT, as we do when the file is absent, so clients can fall back.
    """
    if not fields:
        raise ServingError(StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    servable = manager.get(spec.name, spec.version, spec.label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    for name in fields:
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


def model_status(manager: ModelManager, spec: ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
    """TF Serving's GetModelStatus: state and load status of one or all versions, newest first."""
    version = manager.resolve_label(spec.name, spec.label) if spec.label else spec.version
    response = get_model_status_pb2.GetModelStatusResponse()
    for state in manager.status(spec.name, version):
        entry = response.model_version_status.add()
        entry.version = state.version
        entry.state = _STATE_ENUM.Value(state.state)
        entry.status.error_code = _ERROR_CODE_ENUM.values_by_name[state.error_code].number
        entry.status.error_message = state.error_message
    return response
