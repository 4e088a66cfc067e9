"""Model warm-up as TF Serving's ``--enable_model_warmup``: replay recorded requests before serving.

A version's ``assets.extra/tf_serving_warmup_requests`` is a TFRecord file of
``tensorflow.serving.PredictionLog`` records. Each ``predict_log.request`` is run once through the
version's signature (validated like a real request) after the SavedModel loaded and *before* the
version is marked AVAILABLE, so the first real request does not pay for graph tracing, kernel
selection and memory allocation. As in TF Serving, a record that fails makes the whole load fail
(the version is reported ``END`` with the error, the previous version keeps serving), at most
:data:`MAX_WARMUP_RECORDS` records are read, and other log kinds (classify, regress, ...) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfduch.serving.errors import ServingError, StatusCode
from tfduch.serving.models import Servable
from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

__all__ = ["WARMUP_FILE", "MAX_WARMUP_RECORDS", "read_warmup_requests", "replay_warmup", "write_warmup_requests"]

log = logging.getLogger("tfduch.serving")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def read_warmup_requests(version_dir: Path) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a version's warm-up file ([] when it has none)."""
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return []
    records = []
    try:
        for raw in tf.data.TFRecordDataset(str(path)):
            if len(records) >= MAX_WARMUP_RECORDS:
                raise ServingError(StatusCode.INVALID_ARGUMENT, (
                    f"{path}: more than {MAX_WARMUP_RECORDS} warm-up records (TF Serving's limit)"))
            records.append(prediction_log_pb2.PredictionLog.FromString(raw.numpy()))
    except (tf.errors.OpError, ValueError) as exc:  # DataLossError on a truncated file, DecodeError
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"{path}: unreadable warm-up file: {exc}") from None
    return records


def replay_warmup(servable: Servable) -> int:
    """Run every warm-up record through ``servable``; returns how many ran (also in ``warmup_requests``)."""
    records = read_warmup_requests(servable.path)
    for i, record in enumerate(records):
        kind = record.WhichOneof("log_type")
        if kind != "predict_log":
            raise ServingError(StatusCode.UNIMPLEMENTED, (
                f"warm-up record {i} of {servable.name} v{servable.version} is a {kind}; only predict_log is served"))
        request = record.predict_log.request
        runner = servable.runner(request.model_spec.signature_name)
        inputs = {name: tensor_proto_to_array(proto) for name, proto in request.inputs.items()}
        try:
            runner.validate(inputs)
            runner.run(inputs)
        except ServingError as exc:
            raise ServingError(exc.code, f"warm-up record {i} ({runner.name}) failed: {exc.message}") from None
    servable.warmup_requests = len(records)
    if records:
        log.info("model %s version %d: replayed %d warm-up requests", servable.name, servable.version, len(records))
    return len(records)


def write_warmup_requests(path: Path, requests: dict[str, dict[str, object]], model_name: str = "") -> Path:
    """Write a warm-up file: one ``PredictionLog`` per ``{signature: {input: array}}`` entry (for tests and
    exports without their own writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            record = prediction_log_pb2.PredictionLog()
            request = record.predict_log.request
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(array_to_tensor_proto(value))
            writer.write(record.SerializeToString())
    return path
