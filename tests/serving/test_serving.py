"""tfduch serve + Client over real gRPC and REST on loopback, with small SavedModels built here.

The toy models follow the export's serving contract (``encode_text``, ``encode_image``,
``encode_image_features``, ``metadata``) but compute cheap codes, so every test checks the server
against the same SavedModel called in-process, not against hard-coded numbers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, install_version, run_in_threads, salted_hash_bits, wait_for

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving.apis")
grpc = pytest.importorskip("grpc")

from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfduch.serving import ServingError  # noqa: E402
from tfduch.serving.batching import BatchingOptions  # noqa: E402
from tfduch.serving.client import Client  # noqa: E402
from tfduch.serving.models import (  # noqa: E402
    ModelSource,
    RequestLimits,
    VersionPolicy,
    list_versions,
    read_model_config_file,
)
from tfduch.serving.server import ModelServer, ServerOptions  # noqa: E402

BITS = 16


# --------------------------------------------------------------------------------------------------
# Toy SavedModels
# --------------------------------------------------------------------------------------------------
def _outputs(bits01):
    codes = tf.cast(bits01, tf.int8) * 2 - 1
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    packed = tf.reduce_sum(tf.reshape(tf.cast(bits01, tf.int32), [-1, BITS // 8, 8]) * weights, axis=-1)
    return {"codes": codes, "packed": tf.cast(packed, tf.uint8)}


class _Toy(tf.Module):
    """Codes from a salted string hash (text), 8x8 pixels (image) or a linear map (features)."""

    def __init__(self, salt: int) -> None:
        super().__init__()
        self.salt = tf.constant(str(salt))
        self.model_id = f"toy-{salt}"
        self.w_image = tf.Variable(tf.random.stateless_normal([8 * 8 * 3, BITS], seed=[salt, 1]))
        self.w_features = tf.Variable(tf.random.stateless_normal([8, BITS], seed=[salt, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def encode_text(self, text):
        return _outputs(salted_hash_bits(self.salt, text, BITS))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def encode_image(self, image_bytes):
        def pixels(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.reshape(tf.image.resize(tf.cast(image, tf.float32), [8, 8]), [-1])

        x = tf.map_fn(pixels, image_bytes, fn_output_signature=tf.TensorSpec([192], tf.float32))
        return _outputs(tf.cast((x - 127.0) @ self.w_image >= 0, tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
    def encode_image_features(self, features):
        return _outputs(tf.cast(features @ self.w_features >= 0, tf.int32))

    @tf.function(input_signature=[])
    def metadata(self):
        return {"json": tf.constant(json.dumps({"code_length": BITS, "model_id": self.model_id}))}


def _save_toy(path: Path, salt: int, with_metadata: bool = True) -> Path:
    module = _Toy(salt)
    signatures = {"serving_default": module.encode_text, "encode_text": module.encode_text,
                  "encode_image": module.encode_image, "encode_image_features": module.encode_image_features}
    if with_metadata:
        signatures["metadata"] = module.metadata
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two versions of the toy model (v2 has a different salt and no metadata signature), saved once."""
    root = tmp_path_factory.mktemp("store")
    v1, v2 = _save_toy(root / "v1", 1), _save_toy(root / "v2", 2, with_metadata=False)
    return {"v1": v1, "v2": v2, "ref1": tf.saved_model.load(str(v1)), "ref2": tf.saved_model.load(str(v2))}


def _options(base: Path, **kwargs) -> ServerOptions:
    sources = [ModelSource(name, base / name) for name in ("toy", "plain", "bare")]
    defaults = dict(host="127.0.0.1", port=0, rest_api_port=0, file_system_poll_wait_seconds=0,
                    limits=RequestLimits(max_request_batch_size=8))
    return ServerOptions(models=sources, **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    install_version(store["v1"], base / "toy", 1)
    plain = install_version(store["v2"], base / "plain", 3)
    (plain / "assets.extra").mkdir()
    (plain / "assets.extra" / "tfduch_metadata.json").write_text(json.dumps({"code_length": BITS, "model_id": "p"}))
    install_version(store["v2"], base / "bare", 1)
    with ModelServer(_options(base)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_address, "toy", timeout=10) as c:
        yield c


def _ref(store, key: str, signature: str, **inputs) -> dict[str, np.ndarray]:
    out = store[key].signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Client over gRPC
# --------------------------------------------------------------------------------------------------
TEXTS = ["planes parked next to a terminal", "a river through green fields", "dense residential area", "été"]


def test_encode_texts_equal_in_process_codes(client, store):
    codes = client.encode_texts(TEXTS)
    ref = _ref(store, "ref1", "encode_text", text=TEXTS)
    assert codes.dtype == np.int8 and codes.shape == (len(TEXTS), BITS)
    np.testing.assert_array_equal(codes, ref["codes"])
    packed = client.predict({"text": TEXTS}, "encode_text")["packed"]
    np.testing.assert_array_equal(packed, np.packbits(codes > 0, axis=1))


def test_long_lists_are_split_into_requests(server, store):
    texts = [f"caption {i}" for i in range(21)]  # server refuses requests above 8 items
    with Client(server.grpc_address, "toy", batch_size=8) as small:
        expected = _ref(store, "ref1", "encode_text", text=texts)["codes"]
        np.testing.assert_array_equal(small.encode_texts(texts), expected)
    with Client(server.grpc_address, "toy", batch_size=64) as big, pytest.raises(ServingError) as err:
        big.encode_texts(texts)
    assert err.value.code == "INVALID_ARGUMENT" and "larger than maximum input batch size 8" in err.value.message


def test_encode_images_from_bytes_and_paths(client, store, tmp_path):
    from PIL import Image

    pngs = [_png(i) for i in range(3)]
    tiff = tmp_path / "scene.tif"
    Image.open(io.BytesIO(pngs[2])).save(tiff, format="TIFF")  # decode_image cannot read TIFF: client converts
    png_path = tmp_path / "scene.png"
    png_path.write_bytes(pngs[1])
    codes = client.encode_images([pngs[0], png_path, str(tiff)])
    np.testing.assert_array_equal(codes, _ref(store, "ref1", "encode_image", image_bytes=pngs)["codes"])


def test_encode_features_and_empty_lists(client, store):
    features = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    ref = _ref(store, "ref1", "encode_image_features", features=features)["codes"]
    np.testing.assert_array_equal(client.encode_features(features, "image"), ref)
    assert client.encode_texts([]).shape == (0, BITS)  # no request: the code length comes from metadata
    with pytest.raises(ValueError, match="modality"):
        client.encode_features(features, "audio")
    with pytest.raises(TypeError, match="list of strings"):
        client.encode_texts("a single caption")


def test_metadata_signatures_and_export_metadata(server, client):
    meta = client.metadata()
    assert (meta.model_name, meta.version) == ("toy", 1)
    assert meta.signatures["encode_text"]["inputs"] == {"text": {"dtype": "string", "shape": [-1]}}
    assert meta.signatures["encode_text"]["outputs"]["codes"] == {"dtype": "int8", "shape": [-1, BITS]}
    assert meta.tfduch == {"code_length": BITS, "model_id": "toy-1"} and meta.code_length == BITS
    with Client(server.grpc_address, "plain") as plain:  # no metadata signature: the client reads nothing else
        other = plain.metadata()
        assert other.version == 3 and other.tfduch is None and other.code_length == BITS
    with Client(server.grpc_address, "bare") as bare:  # neither: signature defs only
        other = bare.metadata()
        assert other.tfduch is None and other.code_length == BITS
    # The raw answer is TF Serving's: a SignatureDefMap packed in an Any under "signature_def".
    assert meta.raw.metadata["signature_def"].Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR)


def test_model_status(client):
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]


# --------------------------------------------------------------------------------------------------
# Bad requests over gRPC: TF Serving's codes, a clear message, and the server stays up
# --------------------------------------------------------------------------------------------------
def _predict(model="toy", signature="encode_text", version=None, label="", output_filter=(), **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label  # a oneof with version: setting it clears the version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, type(request.inputs[name])) else
                                      tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def _bad_tensor():
    proto = tf.make_tensor_proto(np.zeros((2, 8), np.float32))
    proto.tensor_content = proto.tensor_content[:12]  # 3 floats for a [2, 8] tensor
    return proto


BAD_PREDICTS = {
    "unknown model": (_predict(model="nope", text=["a"]), "NOT_FOUND", "Servable not found"),
    "unknown version": (_predict(version=7, text=["a"]), "NOT_FOUND", "Specific(toy, 7)"),
    "version label": (_predict(label="stable", text=["a"]), "INVALID_ARGUMENT", "label"),
    "unknown signature": (_predict(signature="encode_audio", text=["a"]), "INVALID_ARGUMENT", "encode_audio"),
    "wrong dtype": (_predict(text=np.ones(2, np.float32)), "INVALID_ARGUMENT", "must be string, got float"),
    "wrong shape": (_predict(signature="encode_image_features", features=np.ones((2, 5), np.float32)),
                    "INVALID_ARGUMENT", "shape [?,8], got [2,5]"),
    "rank mismatch": (_predict(text=[["a", "b"]]), "INVALID_ARGUMENT", "shape [?]"),
    "missing input": (_predict(), "INVALID_ARGUMENT", "missing ['text']"),
    "extra input": (_predict(text=["a"], extra=["b"]), "INVALID_ARGUMENT", "unexpected ['extra']"),
    "empty batch": (_predict(text=np.array([], dtype=object)), "INVALID_ARGUMENT", "empty batch"),
    "non-UTF-8 text": (_predict(text=[b"ok", b"caf\xe9"]), "INVALID_ARGUMENT", "item 1 is not valid UTF-8"),
    "undecodable image": (_predict(signature="encode_image", image_bytes=[b"not an image"]), "INVALID_ARGUMENT",
                          "Unknown image file format"),
    "oversized batch": (_predict(text=["a"] * 9), "INVALID_ARGUMENT", "Task size 9 is larger than"),
    "unknown output": (_predict(text=["a"], output_filter=["logits"]), "INVALID_ARGUMENT", "logits"),
    "malformed tensor": (_predict(signature="encode_image_features", features=_bad_tensor()), "INVALID_ARGUMENT",
                         "not a valid TensorProto"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTS))
def test_bad_predict_requests(server, client, case):
    request, code, fragment = BAD_PREDICTS[case]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(client._channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=10)
    assert err.value.code().name == code
    assert fragment in err.value.details()
    assert client.encode_texts(["still up"]).shape == (1, BITS)


def test_taken_port_is_an_error(server, tmp_path):
    with pytest.raises(OSError, match="port in use"):
        ModelServer(_options(tmp_path, port=server.grpc_port, rest_api_port=-1)).start()


def test_bad_metadata_and_status_requests(client):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(client._channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "toy"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata_field" in err.value.details()
    request.metadata_field.append("graph_def")
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "graph_def" in err.value.details()
    with Client(client.target, "nope") as missing, pytest.raises(ServingError) as err2:
        missing.status()
    assert err2.value.code == "NOT_FOUND"
    with Client(client.target, "toy", version=5) as pinned, pytest.raises(ServingError) as err3:
        pinned.metadata()
    assert err3.value.code == "NOT_FOUND"
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    assert client._models.GetModelStatus(request, timeout=10).model_version_status[0].version == 1


# --------------------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------------------
def _http(server, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_predict_row_and_columnar_formats(server, store):
    ref = _ref(store, "ref1", "encode_text", text=TEXTS)
    status, rows = _http(server, "/v1/models/toy:predict", {"instances": TEXTS})
    assert status == 200
    np.testing.assert_array_equal([row["codes"] for row in rows["predictions"]], ref["codes"])
    np.testing.assert_array_equal([row["packed"] for row in rows["predictions"]], ref["packed"])
    status, cols = _http(server, "/v1/models/toy/versions/1:predict",
                         {"signature_name": "encode_text", "inputs": {"text": TEXTS}})
    assert status == 200 and cols["outputs"]["codes"] == ref["codes"].tolist()
    status, named_rows = _http(server, "/v1/models/toy:predict", {"instances": [{"text": t} for t in TEXTS]})
    assert status == 200 and named_rows == rows


def test_rest_binary_inputs_and_features(server, store):
    pngs = [_png(7), _png(8)]
    body = {"signature_name": "encode_image", "instances": [{"b64": base64.b64encode(p).decode()} for p in pngs]}
    status, out = _http(server, "/v1/models/toy:predict", body)
    assert status == 200
    ref = _ref(store, "ref1", "encode_image", image_bytes=pngs)["codes"]
    np.testing.assert_array_equal([row["codes"] for row in out["predictions"]], ref)
    features = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    status, out = _http(server, "/v1/models/toy:predict",
                        {"signature_name": "encode_image_features", "inputs": features.tolist()})
    assert status == 200
    assert out["outputs"]["codes"] == _ref(store, "ref1", "encode_image_features", features=features)["codes"].tolist()


def test_rest_status_and_metadata(server):
    status, body = _http(server, "/v1/models/toy")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = _http(server, "/v1/models/toy/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    sig = body["metadata"]["signature_def"]["signature_def"]["encode_text"]
    assert sig["inputs"]["text"]["dtype"] == "DT_STRING"


BAD_REST = {
    "unknown model": ("/v1/models/nope:predict", {"instances": ["a"]}, 404, "Servable not found"),
    "unknown version": ("/v1/models/toy/versions/9:predict", {"instances": ["a"]}, 404, "Specific(toy, 9)"),
    "unknown model status": ("/v1/models/nope", None, 404, "nope"),
    "unknown signature": ("/v1/models/toy:predict", {"signature_name": "x", "instances": ["a"]}, 400, '"x"'),
    "wrong dtype": ("/v1/models/toy:predict", {"instances": [1.5]}, 400, "expected a string"),
    "number expected": ("/v1/models/toy:predict", {"signature_name": "encode_image_features",
                                                   "instances": [["a"] * 8]}, 400, "expected float32 numbers"),
    "wrong shape": ("/v1/models/toy:predict", {"signature_name": "encode_image_features",
                                               "instances": [[1.0] * 5]}, 400, "shape [?,8], got [1,5]"),
    "ragged": ("/v1/models/toy:predict", {"signature_name": "encode_image_features",
                                          "inputs": [[1.0] * 8, [1.0] * 7]}, 400, "ragged"),
    "empty batch": ("/v1/models/toy:predict", {"instances": []}, 400, "empty batch"),
    "missing input": ("/v1/models/toy:predict", {"inputs": {"texts": ["a"]}}, 400, "Missing named input: text"),
    "no inputs key": ("/v1/models/toy:predict", {"signature_name": "encode_text"}, 400, "Missing 'inputs'"),
    "invalid JSON": ("/v1/models/toy:predict", b"{not json", 400, "JSON Parse error"),
    "invalid base64": ("/v1/models/toy:predict", {"instances": [{"b64": "%%%"}]}, 400, "invalid base64"),
    "non-UTF-8 text": ("/v1/models/toy:predict", {"instances": [{"b64": base64.b64encode(b"\xff").decode()}]},
                       400, "not valid UTF-8"),
    "undecodable image": ("/v1/models/toy:predict", {"signature_name": "encode_image",
                                                     "instances": [{"b64": "bm90IGFuIGltYWdl"}]}, 400,
                          "Unknown image file format"),
    "oversized batch": ("/v1/models/toy:predict", {"instances": ["a"] * 9}, 400, "larger than maximum"),
    "classify": ("/v1/models/toy:classify", {"examples": []}, 501, "predict"),
    "not an API path": ("/v2/whatever", None, 404, "Malformed request"),
}


@pytest.mark.parametrize("case", list(BAD_REST))
def test_rest_bad_requests(server, case):
    path, body, code, fragment = BAD_REST[case]
    status, reply = _http(server, path, raw=body) if isinstance(body, bytes) else _http(server, path, body)
    assert (status, list(reply)) == (code, ["error"])
    assert fragment in reply["error"]
    assert _http(server, "/v1/models/toy:predict", {"instances": ["still up"]})[0] == 200


# --------------------------------------------------------------------------------------------------
# Versions, batching, retries, deadlines
# --------------------------------------------------------------------------------------------------
def test_new_version_is_picked_up_and_removed_one_unloaded(store, tmp_path):
    install_version(store["v1"], tmp_path / "toy", 1)
    with ModelServer(_options(tmp_path, file_system_poll_wait_seconds=0.1, rest_api_port=-1)) as srv, \
            Client(srv.grpc_address, "toy") as c:
        assert c.metadata().version == 1
        # Temp and non-integer folders are never loaded, even with a complete SavedModel inside.
        shutil.copytree(store["v2"], tmp_path / "toy" / ".tmp-9")
        shutil.copytree(store["v2"], tmp_path / "toy" / "9.partial")
        (tmp_path / "toy" / "8").mkdir()  # a version folder without saved_model.pb yet
        install_version(store["v2"], tmp_path / "toy", 2)
        wait_for(lambda: c.metadata(refresh=True).version == 2)
        np.testing.assert_array_equal(c.encode_texts(TEXTS), _ref(store, "ref2", "encode_text", text=TEXTS)["codes"])
        assert srv.manager.loaded_versions("toy") == [2]
        assert [(s["version"], s["state"]) for s in c.status()] == [(2, "AVAILABLE"), (1, "END")]
        with Client(srv.grpc_address, "toy", version=1) as old, pytest.raises(ServingError) as err:
            old.encode_texts(["x"])
        assert err.value.code == "NOT_FOUND"
        shutil.rmtree(tmp_path / "toy" / "2")  # removing the newest falls back to the previous version
        wait_for(lambda: srv.manager.loaded_versions("toy") == [1])
        np.testing.assert_array_equal(c.encode_texts(TEXTS), _ref(store, "ref1", "encode_text", text=TEXTS)["codes"])


def test_batching_merges_concurrent_requests_and_isolates_failures(store, tmp_path):
    install_version(store["v1"], tmp_path / "toy", 1)
    batching = BatchingOptions(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1)
    texts = [f"caption number {i}" for i in range(16)]
    expected = _ref(store, "ref1", "encode_text", text=texts)["codes"]
    pngs = [_png(i) for i in range(4)]
    with ModelServer(_options(tmp_path, enable_batching=True, batching=batching, rest_api_port=-1)) as srv, \
            Client(srv.grpc_address, "toy") as c:
        results: dict[int, object] = {}

        def encode(i: int) -> None:
            results[i] = c.encode_texts([texts[i]])

        run_in_threads(encode, 16)
        np.testing.assert_array_equal(np.concatenate([results[i] for i in range(16)]), expected)
        stats = srv.batcher.stats()
        assert stats["tasks"] == 16 and stats["batches"] < 16 and stats["largest_batch"] > 1

        def encode_image(i: int) -> None:
            try:
                results[i] = c.encode_images([pngs[i] if i < 4 else b"broken"])
            except ServingError as exc:
                results[i] = exc

        run_in_threads(encode_image, 5)
        assert isinstance(results[4], ServingError) and results[4].code == "INVALID_ARGUMENT"
        ref = _ref(store, "ref1", "encode_image", image_bytes=pngs)["codes"]
        np.testing.assert_array_equal(np.concatenate([results[i] for i in range(4)]), ref)
        # A deadline shorter than the batch timeout fails fast on the client, without retries.
        with Client(srv.grpc_address, "toy", timeout=0.02) as hurried, pytest.raises(ServingError) as err:
            hurried.encode_texts(["late"])
        assert err.value.code == "DEADLINE_EXCEEDED"


class _Doubler:
    """A stand-in SignatureRunner for the scheduler alone."""

    batchable = True

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, inputs):
        self.calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


def test_batching_lone_requests_skip_the_queue_and_concurrent_ones_still_merge():
    from tfduch.serving.batching import BatchScheduler

    runner = _Doubler()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                                               timeout_from_free=True))
    try:
        for i in range(3):  # the first waits for company once; later lone requests run at once, in their thread
            out = scheduler.run(runner, {"x": np.array([i, i + 1], np.float32)}, 2)
            np.testing.assert_array_equal(out["y"], [2 * i, 2 * i + 2])
        assert scheduler.stats()["direct"] == 2 and runner.calls == [2, 2, 2]
        results: dict[int, np.ndarray] = {}

        def one(i: int) -> None:
            results[i] = scheduler.run(runner, {"x": np.array([i], np.float32)}, 1)["y"]

        run_in_threads(one, 8)
        assert all(results[i].tolist() == [2 * i] for i in range(8))
        assert scheduler.stats()["largest_batch"] > 1
    finally:
        scheduler.stop()


def test_batching_runs_a_full_batch_at_once_and_a_partial_one_at_its_timeout():
    """Arrivals wake a batch thread only for a new queue or a full batch: the full batch must still run at once
    (not after the 5 s timeout), and a partial one when its timeout ends."""
    import time

    from tfduch.serving.batching import BatchScheduler

    runner = _Doubler()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=5_000_000, num_batch_threads=1))
    try:
        start = time.monotonic()
        run_in_threads(lambda i: scheduler.run(runner, {"x": np.array([i], np.float32)}, 1), 4)
        assert time.monotonic() - start < 2.5 and runner.calls == [4]
    finally:
        scheduler.stop()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000, num_batch_threads=2))
    try:
        start = time.monotonic()
        run_in_threads(lambda i: scheduler.run(runner, {"x": np.array([i], np.float32)}, 1), 3)
        assert 0.25 <= time.monotonic() - start < 2.5 and runner.calls[1:] == [3]
    finally:
        scheduler.stop()


def test_tensor_proto_fast_paths_match_tensorflow():
    from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

    cases = [np.array([b"a", b"\xff"], dtype=object), np.array(["caf\u00e9", "x"]), np.ones((2, 64), np.int8),
             np.arange(12, dtype=np.float32).reshape(3, 4).T, np.zeros((0, 3), np.float32),
             np.array([True, False]), np.array([1.5], np.float16), [[1, 2]], 3.0]
    for value in cases:
        expected = tf.make_ndarray(tf.make_tensor_proto(value))
        for got in (tf.make_ndarray(array_to_tensor_proto(value)), tensor_proto_to_array(tf.make_tensor_proto(value))):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(TypeError):
        array_to_tensor_proto(np.array(["a", 1], dtype=object))


def test_client_retries_while_unavailable(store, tmp_path):
    port = _free_port()
    with Client(f"127.0.0.1:{port}", "toy", retries=2, backoff=0.01) as c, pytest.raises(ServingError) as err:
        c.encode_texts(["nobody listens"])
    assert err.value.code == "UNAVAILABLE" and "after 3 attempts" in err.value.message

    install_version(store["v1"], tmp_path / "toy", 1)
    servers: list[ModelServer] = []
    starter = threading.Timer(1.0, lambda: servers.append(
        ModelServer(_options(tmp_path, port=port, rest_api_port=-1)).start()))
    starter.start()
    try:
        with Client(f"127.0.0.1:{port}", "toy", retries=8, backoff=0.2, max_backoff=1.0) as c:
            np.testing.assert_array_equal(c.encode_texts(["late server"]),
                                          _ref(store, "ref1", "encode_text", text=["late server"])["codes"])
    finally:
        starter.join()
        for srv in servers:
            srv.stop()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_encode_cli_through_server(server, client, tmp_path, capsys):
    from tfduch.cli import main

    out = tmp_path / "codes.npy"
    assert main(["encode", "--server", server.grpc_address, "--model", "toy", "--text", TEXTS[0],
                 "--text", TEXTS[1], "--output", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), client.encode_texts(TEXTS[:2]))
    assert main(["encode", "--server", server.grpc_address, "--model", "toy", "--text", TEXTS[0]]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == np.packbits(client.encode_texts(TEXTS[:1])[0] > 0).tobytes().hex() + "\t" + TEXTS[0]
    assert main(["encode", "--server", server.grpc_address, "--model", "toy", "--metadata"]) == 0
    assert json.loads(capsys.readouterr().out)["tfduch"]["code_length"] == BITS
    assert main(["encode", "--server", server.grpc_address, "--model", "nope", "--text", "a"]) == 2
    assert main(["encode", "--server", server.grpc_address, "--model", "toy", "--image", str(tmp_path / "no.png")]) == 2
    assert "no.png" in capsys.readouterr().err


def test_serve_command_in_process(store, tmp_path, capsys):
    """`tfduch serve` flags → options → a running server that stops when asked."""
    from tfduch.cli import build_parser
    from tfduch.serving.cli import run_server, serve_options

    install_version(store["v1"], tmp_path / "toy", 1)
    args = build_parser().parse_args([
        "serve", "--model_name", "toy", "--model_base_path", str(tmp_path / "toy"), "--host", "127.0.0.1",
        "--port", "0", "--rest_api_port", "0", "--enable_batching", "--max_batch_size", "4",
        "--max_request_batch_size", "16", "--model_version_policy", "latest:2"])
    options = serve_options(args)
    assert (options.batching.max_batch_size, options.limits.max_request_batch_size) == (4, 16)
    assert str(options.models[0].policy) == "latest:2" and options.enable_batching
    ready, stop = tmp_path / "ready.json", threading.Event()
    thread = threading.Thread(target=run_server, args=(options, stop, ready))
    thread.start()
    try:
        wait_for(ready.exists)
        ports = json.loads(ready.read_text())
        with Client(f"127.0.0.1:{ports['grpc_port']}", "toy") as c:
            expected = _ref(store, "ref1", "encode_text", text=TEXTS)["codes"]
            np.testing.assert_array_equal(c.encode_texts(TEXTS), expected)  # 4 items: fits one batch
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['rest_api_port']}/v1/models/toy", timeout=10) as r:
            assert json.loads(r.read())["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and "shutting down" in capsys.readouterr().out
    with pytest.raises(ValueError, match="model_base_path"):
        serve_options(build_parser().parse_args(["serve"]))


@pytest.mark.slow
def test_serve_cli_subprocess(store, tmp_path):
    install_version(store["v1"], tmp_path / "toy", 1)
    ready = tmp_path / "ready.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tfduch.cli", "serve", "--model_name", "toy",
                             "--model_base_path", str(tmp_path / "toy"), "--host", "127.0.0.1", "--port", "0",
                             "--rest_api_port", "0", "--ready_file", str(ready), "--enable_batching"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, proc.stdout.read()
        ports = json.loads(ready.read_text())
        with Client(f"127.0.0.1:{ports['grpc_port']}", "toy") as c:
            expected = _ref(store, "ref1", "encode_text", text=TEXTS)["codes"]
            np.testing.assert_array_equal(c.encode_texts(TEXTS), expected)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['rest_api_port']}/v1/models/toy", timeout=10) as r:
            assert json.loads(r.read())["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "shutting down" in output


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------
def test_version_policy_and_version_folders(tmp_path):
    assert VersionPolicy.parse("latest").select([1, 5, 3]) == {5}
    assert VersionPolicy.parse("latest:2").select([1, 5, 3]) == {3, 5}
    assert VersionPolicy.parse("all").select([1, 5]) == {1, 5}
    assert VersionPolicy.parse("specific:1,4").select([1, 5]) == {1}
    for bad in ("latest:0", "newest", "specific:", "all:2"):
        with pytest.raises(ValueError, match="version policy"):
            VersionPolicy.parse(bad)
    for name in ("1", "12", ".tmp-3", "4.partial", "x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "7").mkdir()
    assert sorted(list_versions(tmp_path)) == [1, 12]


def test_model_config_file(tmp_path):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "a" base_path: "exports/a" model_platform: "tensorflow" '
                      'model_version_policy { latest { num_versions: 2 } } } '
                      'config { name: "b" base_path: "/abs/b" model_version_policy { specific { versions: 3 } } } }')
    a, b = read_model_config_file(config)
    assert (a.name, a.base_path, str(a.policy)) == ("a", tmp_path / "exports" / "a", "latest:2")
    assert (b.name, b.base_path, str(b.policy)) == ("b", Path("/abs/b"), "specific:3")
    config.write_text("model_config_list { }")
    with pytest.raises(ValueError, match="lists no models"):
        read_model_config_file(config)


# --------------------------------------------------------------------------------------------------
# A real export (trains one epoch on UC Merced, exports, serves)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
def test_real_export_served_codes_equal_in_memory_codes(ucm_root, tmp_path):
    export = pytest.importorskip("tfduch.export")
    from tfduch.cli import main
    from tfduch.pipeline import load_trained, prepare, retrieval_features

    run = tmp_path / "run"
    assert main(["train", "--data", str(ucm_root), "--output", str(run), "--epochs", "1", "--quiet"]) == 0
    version_dir = export.export_model(run, tmp_path / "exports", "tfduch")
    cfg, model, _ = load_trained(run)
    prep = prepare(cfg, progress=False)
    image_features, text_features, _ = retrieval_features(prep, "query")
    samples = [prep.dataset.samples[i] for i in prep.split.query[:12]]
    captions = [s.captions[0] for s in samples]
    options = ServerOptions(models=read_model_config_file(tmp_path / "exports" / "models.config"),
                            host="127.0.0.1", port=0, rest_api_port=-1, file_system_poll_wait_seconds=0)
    exported = export.load_exported(version_dir)
    with ModelServer(options) as srv, Client(srv.grpc_address, "tfduch", batch_size=16) as c:
        assert c.metadata().tfduch["model_id"] == exported.model_id
        np.testing.assert_array_equal(c.encode_features(image_features, "image"), model.encode(image_features, "image"))
        np.testing.assert_array_equal(c.encode_features(text_features, "text"), model.encode(text_features, "text"))
        np.testing.assert_array_equal(c.encode_texts(captions), exported.encode_texts(captions))
        np.testing.assert_array_equal(c.encode_images([s.path for s in samples]),
                                      exported.encode_images([str(s.path) for s in samples]))
