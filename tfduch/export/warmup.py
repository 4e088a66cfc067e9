"""TF Serving warm-up records: ``assets.extra/tf_serving_warmup_requests`` in every export version.

A freshly loaded SavedModel traces and allocates on its first call, so the first real request is slow.
TF Serving (``--enable_model_warmup``, on by default) replays the ``PredictionLog`` records of this
TFRecord file before it marks a version AVAILABLE; ``tfduch serve`` replays the same file. One record per
signature, each a small realistic batch (one caption, one 256×256 PNG, one feature row, the metadata).
The format is TF Serving's (``tensorflow_serving/servables/tensorflow/saved_model_warmup*``): a TFRecord
of ``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` with ``predict_log.request`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["WARMUP_FILE", "MAX_WARMUP_RECORDS", "warmup_inputs", "warmup_logs", "write_warmup_requests",
           "read_warmup_requests"]

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses a warm-up file with more records
WARMUP_CAPTION = "many planes are parked next to a long terminal at the airport ."


def _scene_png(size: int = 256, seed: int = 0) -> bytes:
    """A smooth synthetic colour field at the dataset's image size, PNG-encoded (what a client sends)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(1, 8, 8, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (size, size), method="bilinear")[0]
    return tf.io.encode_png(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)).numpy()


def warmup_inputs(signatures: Mapping[str, Any], source_size: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """Inputs for every signature of ``signatures`` (name → concrete function), keyed by input name.

    Derived from each function's input signature, so a new signature gets a record without code here:
    strings named ``text`` get a caption, other strings an encoded image, float32 ``[None, D]`` one row of
    non-negative unit-norm features (pooled encoder outputs are non-negative).
    """
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, function in signatures.items():
        args, kwargs = function.structured_input_signature
        # A traced function lists its inputs positionally (named by their TensorSpec), a loaded one by keyword.
        specs = {**{spec.name: spec for spec in args}, **kwargs}
        inputs: dict[str, np.ndarray] = {}
        for arg, spec in specs.items():
            if spec.dtype == tf.string:
                value = WARMUP_CAPTION.encode() if arg == "text" else _scene_png(source_size)
                inputs[arg] = np.array([value], dtype=object)
            elif spec.dtype == tf.float32 and spec.shape.rank == 2 and spec.shape[1] is not None:
                row = rng.uniform(0.0, 1.0, size=(1, int(spec.shape[1]))).astype(np.float32)
                inputs[arg] = row / np.linalg.norm(row)
            else:
                raise ValueError(f"no warm-up input for {name}({arg}: {spec.dtype.name} {spec.shape})")
        out[name] = inputs
    return out


def warmup_logs(model_name: str, inputs: Mapping[str, Mapping[str, np.ndarray]]) -> list[Any]:
    """One ``PredictionLog`` (a ``predict_log`` with its request) per signature."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    logs = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for arg, value in tensors.items():
            request.inputs[arg].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warm-up records; TF Serving reads at most {MAX_WARMUP_RECORDS}")
    return logs


def write_warmup_requests(version_dir: str | Path, model_name: str, signatures: Mapping[str, Any],
                          source_size: int = 256) -> Path:
    """Write the warm-up file into ``version_dir`` (a version being built in its temp folder); returns its path."""
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for log in warmup_logs(model_name, warmup_inputs(signatures, source_size)):
            writer.write(log.SerializeToString())
    tmp.replace(path)
    return path


def read_warmup_requests(version_dir: str | Path) -> list[Any]:
    """The ``PredictionLog`` records of a version's warm-up file (empty when it has none)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(path))]
