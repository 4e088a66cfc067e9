"""gRPC client for an encoding server: texts / images / features in, int8 ±1 codes out.

Only the public ``tensorflow_serving.apis`` protos are used, so the same client talks to ``tfduch
serve`` and to a real ``tensorflow_model_server`` serving a tfduch export. It adds what a caller wants
on top of raw Predict calls: long lists split into requests of ``batch_size``, a deadline per request,
retries with exponential backoff while the server is UNAVAILABLE (starting, restarting, queue full),
and errors as :class:`~tfduch.serving.ServingError` with the server's status code.

>>> with Client("localhost:8500") as client:
...     codes = client.encode_texts(["planes parked next to a terminal"])   # int8 [1, K]
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfduch.serving.errors import ServingError
from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

__all__ = ["Client", "ModelMetadata", "SignatureSpec", "DEFAULT_SIGNATURES", "CODES_OUTPUT", "METADATA_SIGNATURE",
           "METADATA_OUTPUT", "as_decodable_image"]

CODES_OUTPUT = "codes"
# The export's metadata JSON reaches the client through the export's ``metadata`` signature: no inputs,
# one scalar string output ``json`` (tfduch.export.graph writes it). A Predict on a signature is what the
# real TF Serving answers, so the model-id check works against it and against ``tfduch serve`` alike.
METADATA_SIGNATURE = "metadata"
METADATA_OUTPUT = "json"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
# Formats tf.io.decode_image reads; anything else (TIFF, ...) is re-encoded as PNG before sending.
_DECODABLE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


@dataclass(frozen=True)
class SignatureSpec:
    """Which signature encodes one kind of input, and the name of its single input tensor."""

    signature: str
    input: str


# The serving contract of ``tfduch export`` (docs/ARCHITECTURE.md).
DEFAULT_SIGNATURES: dict[str, SignatureSpec] = {
    "text": SignatureSpec("encode_text", "text"),
    "image": SignatureSpec("encode_image", "image_bytes"),
    "image_features": SignatureSpec("encode_image_features", "features"),
    "text_features": SignatureSpec("encode_text_features", "features"),
}


@dataclass
class ModelMetadata:
    """What the server says about the model: version, signatures, and the tfduch export metadata.

    ``signatures`` maps a signature name to ``{"inputs": {name: {"dtype", "shape"}}, "outputs": ...}``
    (shape ``-1`` = any). ``tfduch`` is the export's metadata JSON (code length, method, encoders,
    model id, ...) read through the export's ``metadata`` signature, else ``None`` (a SavedModel without
    that signature, e.g. an export written before it existed).
    """

    model_name: str
    version: int
    signatures: dict[str, dict[str, dict[str, dict[str, Any]]]]
    tfduch: dict[str, Any] | None = None
    raw: Any = field(default=None, repr=False)

    @property
    def code_length(self) -> int | None:
        """Bits per code, from the metadata or else from the text signature's ``codes`` shape."""
        if self.tfduch and self.tfduch.get("code_length"):
            return int(self.tfduch["code_length"])
        for sig in (DEFAULT_SIGNATURES["text"].signature, "serving_default", *self.signatures):
            shape = self.signatures.get(sig, {}).get("outputs", {}).get(CODES_OUTPUT, {}).get("shape")
            if shape and len(shape) == 2 and shape[1] > 0:
                return int(shape[1])
        return None


def _tensor_info(info: Any) -> dict[str, Any]:
    dims = [] if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name, "shape": dims if not info.tensor_shape.unknown_rank else None}


def as_decodable_image(data: bytes) -> bytes:
    """``data`` if ``tf.io.decode_image`` reads it (JPEG, PNG, GIF, BMP, WebP), else re-encoded as PNG.

    UC Merced ships TIFFs, which the export's in-graph decoder cannot read; PNG is lossless, so the
    pixels the model sees do not change.
    """
    if data.startswith(_DECODABLE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError):
        return data  # let the server say what is wrong with it


class Client:
    """Encode through a TF-Serving-protocol server (``tfduch serve`` or ``tensorflow_model_server``).

    Args:
        target: ``host:port`` of the gRPC endpoint.
        model_name: served model name (``--model_name`` of the server).
        version: pin a version; ``None`` = the newest the server serves.
        version_label: ask for a labelled version instead (``models.config`` ``version_labels``, e.g. ``stable``).
        timeout: deadline of each request in seconds.
        retries: extra attempts when the server answers UNAVAILABLE (backoff doubles, with jitter).
        backoff: first wait between attempts, seconds; capped at ``max_backoff``.
        batch_size: items per request when encoding a long list.
        signatures: overrides of :data:`DEFAULT_SIGNATURES` (keys ``text``, ``image``, ``image_features``,
            ``text_features``) for models exported with other names.
        credentials: ``grpc.ssl_channel_credentials(...)`` for TLS; default is an insecure channel.
        root_certificates: PEM of the CA that signed the server's certificate: TLS (implies a secure channel).
        private_key, certificate_chain: PEM client key and certificate, for a server with ``client_verify``
            (mutual TLS).
    """

    def __init__(self, target: str, model_name: str = "tfduch", *, version: int | None = None, version_label: str = "",
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.1, max_backoff: float = 5.0,
                 batch_size: int = 64, signatures: Mapping[str, SignatureSpec] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None) -> None:
        if batch_size < 1 or retries < 0 or timeout <= 0:
            raise ValueError(f"need batch_size >= 1, retries >= 0, timeout > 0; got {batch_size}, {retries}, "
                             f"{timeout}")
        if version is not None and version_label:
            raise ValueError("give a version or a version_label, not both")
        self.target, self.model_name, self.version = target, model_name, version
        self.version_label = version_label
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.batch_size = batch_size
        self.signatures = {**DEFAULT_SIGNATURES, **(signatures or {})}
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("a client certificate needs both private_key and certificate_chain")
        if credentials is None and (root_certificates or private_key):
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._metadata: ModelMetadata | None = None

    # -- transport -------------------------------------------------------------------------------
    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        """One RPC with the deadline; retried with backoff while UNAVAILABLE; errors as ServingError."""
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                    time.sleep(delay * (0.5 + random.random()))
                    continue
                details = exc.details() if hasattr(exc, "details") else str(exc)
                suffix = f" (after {attempt + 1} attempts)" if code == grpc.StatusCode.UNAVAILABLE else ""
                raise ServingError(code.name, f"{details} [{self.target}, model {self.model_name}]{suffix}") from None
        raise AssertionError("unreachable")

    def _spec(self, request: Any, signature: str = "", version: int | None = None) -> None:
        """Model spec of a request: this client's model, ``version`` (default: the client's) and signature."""
        request.model_spec.name = self.model_name
        version = self.version if version is None else version
        if version is not None:
            request.model_spec.version.value = version
        elif self.version_label:
            request.model_spec.version_label = self.version_label
        if signature:
            request.model_spec.signature_name = signature

    def predict(self, inputs: Mapping[str, Any], signature: str = "serving_default",
                output_filter: Sequence[str] = (), version: int | None = None) -> dict[str, np.ndarray]:
        """One raw Predict call: named arrays in (anything ``tf.make_tensor_proto`` takes), arrays out.

        ``version`` pins this call to one model version (default: the client's, else the newest).
        """
        request = predict_pb2.PredictRequest()
        self._spec(request, signature, version)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(array_to_tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._call(self._predict.Predict, request)
        return {name: tensor_proto_to_array(proto) for name, proto in response.outputs.items()}

    # -- encoding --------------------------------------------------------------------------------
    def _encode(self, kind: str, items: Any, count: int) -> np.ndarray:
        spec = self.signatures[kind]
        if count == 0:
            bits = self.metadata().code_length or 0
            return np.zeros((0, bits), np.int8)
        chunks = []
        for start in range(0, count, self.batch_size):
            outputs = self.predict({spec.input: items[start:start + self.batch_size]}, spec.signature,
                                   output_filter=[CODES_OUTPUT])
            chunks.append(outputs[CODES_OUTPUT])
        return np.concatenate(chunks).astype(np.int8, copy=False)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """int8 ±1 codes ``[len(texts), K]`` of raw captions (tokenized inside the served graph)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_texts takes a list of strings, not a single string")
        items = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
        return self._encode("text", np.array(items, dtype=object), len(items))

    def encode_images(self, images: Sequence[bytes | str | os.PathLike[str]]) -> np.ndarray:
        """int8 ±1 codes of encoded images given as bytes or file paths (TIFF etc. re-encoded as PNG)."""
        if isinstance(images, (str, bytes, os.PathLike)):
            raise TypeError("encode_images takes a list of images (bytes or paths), not a single one")
        items = [as_decodable_image(bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else Path(x).read_bytes())
                 for x in images]
        return self._encode("image", np.array(items, dtype=object), len(items))

    def encode_features(self, features: Any, modality: str) -> np.ndarray:
        """int8 ±1 codes of precomputed encoder features ``[N, D]`` (``modality`` = image or text)."""
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        array = np.asarray(features, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"features must be a 2-D array [N, D], got shape {array.shape}")
        return self._encode(f"{modality}_features", array, len(array))

    # -- model information -----------------------------------------------------------------------
    def metadata(self, refresh: bool = False) -> ModelMetadata:
        """Signatures (GetModelMetadata) and, when served, the export's metadata JSON."""
        if self._metadata is not None and not refresh:
            return self._metadata
        attempts = 3
        for attempt in range(attempts):
            response, signatures = self._signature_defs()
            version = int(response.model_spec.version.value)
            try:
                export = self._export_metadata(signatures, version)
            except ServingError as exc:
                # A hot swap unloaded that version between the two calls: read the newest one again.
                if exc.code == "NOT_FOUND" and self.version is None and attempt + 1 < attempts:
                    continue
                raise
            self._metadata = ModelMetadata(response.model_spec.name, version, signatures, export, response)
            return self._metadata
        raise AssertionError("unreachable")

    def _signature_defs(self) -> tuple[Any, dict[str, Any]]:
        """GetModelMetadata(signature_def): the raw response and its public signatures as plain dicts."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request)
        request.metadata_field.append("signature_def")
        response = self._call(self._predict.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = {
            name: {"inputs": {k: _tensor_info(v) for k, v in sig.inputs.items()},
                   "outputs": {k: _tensor_info(v) for k, v in sig.outputs.items()},
                   "method_name": sig.method_name}
            for name, sig in signature_map.signature_def.items() if not name.startswith("__")
        }
        return response, signatures

    def _export_metadata(self, signatures: Mapping[str, Any], version: int) -> dict[str, Any] | None:
        if METADATA_SIGNATURE in signatures:
            # Pinned to the version whose signatures were read: during a hot swap the newest version may
            # already be another one, without this signature.
            value = self.predict({}, METADATA_SIGNATURE, version=version)[METADATA_OUTPUT]
            return json.loads(value.item() if isinstance(value, np.ndarray) else value)
        return None

    def status(self) -> list[dict[str, Any]]:
        """GetModelStatus: ``[{"version", "state", "error_code", "error_message"}]``, newest first."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request)
        response = self._call(self._models.GetModelStatus, request)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": int(s.version), "state": state_name(s.state),
                 "error_code": s.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
                 .values_by_number[s.status.error_code].name,
                 "error_message": s.status.error_message} for s in response.model_version_status]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r}, model_name={self.model_name!r}, version={self.version})"

