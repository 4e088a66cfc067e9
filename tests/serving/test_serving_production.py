"""The production serving kit: labels, config re-read, the batching file, Prometheus, warm-up, mutual TLS.

Small SavedModels built here (a salted string hash → codes), served over real gRPC and REST on loopback;
every expected value comes from the same SavedModel called in-process.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import REPO, install_version, run_in_threads, salted_hash_bits, wait_for

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving.apis")
grpc = pytest.importorskip("grpc")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfduch.errors import ConfigError  # noqa: E402
from tfduch.serving.batching import BatchingOptions  # noqa: E402
from tfduch.serving.client import Client  # noqa: E402
from tfduch.serving.configs import (  # noqa: E402
    SslOptions,
    read_batching_parameters,
    read_monitoring_config,
    read_ssl_config,
)
from tfduch.serving.errors import ServingError  # noqa: E402
from tfduch.serving.metrics import MonitoringOptions  # noqa: E402
from tfduch.serving.models import ModelManager, ModelSource, read_model_config_file  # noqa: E402
from tfduch.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfduch.serving.warmup import WARMUP_FILE, write_warmup_requests  # noqa: E402

BITS = 16


class _Toy(tf.Module):
    def __init__(self, salt: int) -> None:
        super().__init__()
        self.salt = tf.constant(str(salt))

    @tf.function(input_signature=[])
    def metadata(self):
        return {"json": tf.strings.join(['{"salt": ', self.salt, "}"])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def encode_text(self, text):
        return {"codes": tf.cast(salted_hash_bits(self.salt, text, BITS), tf.int8) * 2 - 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("prod-store")
    out = {}
    for salt in (1, 2, 3):
        module = _Toy(salt)
        tf.saved_model.save(module, str(root / f"v{salt}"),
                            signatures={"serving_default": module.encode_text, "encode_text": module.encode_text,
                                        "metadata": module.metadata})
        out[salt] = root / f"v{salt}"
    return out


def _ref(store, salt: int, texts: list[str]) -> np.ndarray:
    loaded = tf.saved_model.load(str(store[salt]))
    return loaded.signatures["encode_text"](text=tf.constant(texts))["codes"].numpy()


def _options(sources, **kwargs) -> ServerOptions:
    defaults = dict(host="127.0.0.1", port=0, rest_api_port=0, file_system_poll_wait_seconds=0)
    return ServerOptions(models=sources, **{**defaults, **kwargs})


def _http(port: int, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _predict_label(stub, model: str, label: str, texts: list[str]):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version_label = label
    request.model_spec.signature_name = "encode_text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts))
    return stub.Predict(request, timeout=10)


def _config_text(models: dict[str, dict]) -> str:
    parts = []
    for name, spec in models.items():
        versions = " ".join(f"versions: {v}" for v in spec["versions"])
        labels = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in spec.get("labels", {}).items())
        parts.append(f'config {{ name: "{name}" base_path: "{spec["path"]}" model_platform: "tensorflow" '
                     f"model_version_policy {{ specific {{ {versions} }} }} {labels} }}")
    return "model_config_list { " + " ".join(parts) + " }\n"


TEXTS = ["planes parked next to a terminal", "a river through green fields", "dense residential area"]


# --------------------------------------------------------------------------------------------------
# models.config: policy, labels, re-read without restart
# --------------------------------------------------------------------------------------------------
def test_labels_over_grpc_and_rest_and_config_reread(store, tmp_path):
    install_version(store[1], tmp_path / "toy", 1)
    install_version(store[2], tmp_path / "toy", 2)
    install_version(store[3], tmp_path / "other", 1)
    config = tmp_path / "models.config"
    config.write_text(_config_text({"toy": {"path": tmp_path / "toy", "versions": [1, 2],
                                            "labels": {"stable": 1, "canary": 2}}}))
    options = _options(read_model_config_file(config), model_config_file=config,
                       model_config_file_poll_wait_seconds=0.1)
    with ModelServer(options) as srv:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(srv.grpc_address))
        assert srv.manager.loaded_versions("toy") == [1, 2]
        for label, salt, version in (("stable", 1, 1), ("canary", 2, 2)):
            response = _predict_label(stub, "toy", label, TEXTS)
            assert response.model_spec.version.value == version
            np.testing.assert_array_equal(tf.make_ndarray(response.outputs["codes"]), _ref(store, salt, TEXTS))
            status, body = _http(srv.rest_port, f"/v1/models/toy/labels/{label}:predict",
                                 {"signature_name": "encode_text", "instances": TEXTS})
            assert status == 200
            np.testing.assert_array_equal([row for row in body["predictions"]], _ref(store, salt, TEXTS))
            status, body = _http(srv.rest_port, f"/v1/models/toy/labels/{label}")
            assert status == 200 and body["model_version_status"][0]["version"] == str(version)
        with Client(srv.grpc_address, "toy", version_label="canary") as canary:
            np.testing.assert_array_equal(canary.encode_texts(TEXTS), _ref(store, 2, TEXTS))
            assert canary.metadata().version == 2
        with pytest.raises(grpc.RpcError) as err:
            _predict_label(stub, "toy", "beta", TEXTS)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label: beta" in err.value.details()
        assert _http(srv.rest_port, "/v1/models/toy/labels/beta:predict", {"instances": TEXTS})[0] == 400
        with pytest.raises(grpc.RpcError) as err:
            _predict_label(stub, "other", "stable", TEXTS)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        # Edit the file: a new model appears, "stable" moves to version 2 — no restart.
        config.write_text(_config_text({
            "toy": {"path": tmp_path / "toy", "versions": [1, 2], "labels": {"stable": 2, "canary": 2}},
            "other": {"path": tmp_path / "other", "versions": [1]}}))
        wait_for(lambda: srv.manager.loaded_versions("other") == [1])
        wait_for(lambda: _predict_label(stub, "toy", "stable", TEXTS).model_spec.version.value == 2)
        with Client(srv.grpc_address, "other") as other:
            np.testing.assert_array_equal(other.encode_texts(TEXTS), _ref(store, 3, TEXTS))
        # A broken edit is refused and the running config keeps serving.
        config.write_text("model_config_list { config { name: ")
        time.sleep(0.5)
        assert srv.manager.loaded_versions("other") == [1]
        # Dropping a model from the file unloads it.
        config.write_text(_config_text({"toy": {"path": tmp_path / "toy", "versions": [1, 2]}}))
        wait_for(lambda: "other" not in srv.manager.sources)
        with Client(srv.grpc_address, "other") as other, pytest.raises(ServingError) as gone:
            other.encode_texts(TEXTS)
        assert gone.value.code == "NOT_FOUND"


def test_reload_config_request_over_grpc(store, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    install_version(store[1], tmp_path / "toy", 1)
    install_version(store[3], tmp_path / "other", 4)
    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")], rest_api_port=-1)) as srv:
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(srv.grpc_address))
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(_config_text({"other": {"path": tmp_path / "other", "versions": [4],
                                                  "labels": {"stable": 4}}}), request.config)
        assert stub.HandleReloadConfigRequest(request, timeout=30).status.error_code == 0
        with Client(srv.grpc_address, "other", version_label="stable") as other:
            np.testing.assert_array_equal(other.encode_texts(TEXTS), _ref(store, 3, TEXTS))
        with Client(srv.grpc_address, "toy") as gone, pytest.raises(ServingError):
            gone.encode_texts(TEXTS)
        with pytest.raises(grpc.RpcError) as err:
            stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_shipped_models_config_parses_with_policy_and_labels():
    (source,) = read_model_config_file(REPO / "serving" / "models.config")
    assert (source.name, str(source.policy), dict(source.labels)) == ("tfduch", "specific:1,2",
                                                                        {"stable": 1, "canary": 2})


def test_export_writes_models_config_only_when_absent_or_generated(tmp_path):
    from tfduch.export.layout import write_models_config

    (tmp_path / "tfduch" / "1").mkdir(parents=True)
    (tmp_path / "tfduch" / "1" / "saved_model.pb").write_bytes(b"")
    path = write_models_config(tmp_path)
    assert [s.name for s in read_model_config_file(path)] == ["tfduch"]
    (tmp_path / "second" / "1").mkdir(parents=True)
    (tmp_path / "second" / "1" / "saved_model.pb").write_bytes(b"")
    write_models_config(tmp_path)  # still the generated file: rewritten with the new model
    assert [s.name for s in read_model_config_file(path)] == ["second", "tfduch"]
    edited = path.read_text().replace('name: "second"', 'name: "second" version_labels { key: "a" value: 1 }')
    path.write_text(edited)
    (tmp_path / "third" / "1").mkdir(parents=True)
    (tmp_path / "third" / "1" / "saved_model.pb").write_bytes(b"")
    write_models_config(tmp_path)  # hand-edited: never overwritten
    assert path.read_text() == edited


# --------------------------------------------------------------------------------------------------
# batching.config
# --------------------------------------------------------------------------------------------------
def test_batching_parameters_file_every_field(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 12 }\nbatch_timeout_micros { value: 3000 }\n"
                    "num_batch_threads { value: 3 }\nmax_enqueued_batches { value: 7 }\n"
                    "allowed_batch_sizes: 4\nallowed_batch_sizes: 12\npad_variable_length_inputs: true\n")
    options = read_batching_parameters(path)
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads,
            options.max_enqueued_batches, options.allowed_batch_sizes, options.pad_variable_length_inputs) == \
        (12, 3000, 3, 7, (4, 12), True)
    assert [options.padded_size(n) for n in (1, 4, 5, 12)] == [4, 4, 12, 12]
    path.write_text("max_batch_size { value: 16 }\n")  # fields left out keep the flags' values
    base = BatchingOptions(batch_timeout_micros=55, num_batch_threads=1)
    assert read_batching_parameters(path, base) == BatchingOptions(16, 55, 1)
    for bad, fragment in (("max_batch_size: 4", "max_batch_size"),  # a wrapper needs { value: }
                          ("max_batch_sizes { value: 4 }", "max_batch_sizes"),
                          ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 6", "end at"),
                          ("max_batch_size { value: 0 }", "positive")):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=fragment):
            read_batching_parameters(path)
    shipped = read_batching_parameters(REPO / "serving" / "batching.config")
    assert shipped.max_batch_size == 8 and shipped.num_batch_threads == 2


def test_batching_file_drives_batching(store, tmp_path):
    install_version(store[1], tmp_path / "toy", 1)
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n"
                    "num_batch_threads { value: 1 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    batching = read_batching_parameters(path)
    texts = [f"caption {i}" for i in range(16)]
    expected = _ref(store, 1, texts)
    options = _options([ModelSource("toy", tmp_path / "toy")], enable_batching=True, batching=batching,
                       monitoring=MonitoringOptions(enable=True))
    with ModelServer(options) as srv, Client(srv.grpc_address, "toy") as c:
        results: dict[int, np.ndarray] = {}
        run_in_threads(lambda i: results.__setitem__(i, c.encode_texts([texts[i]])), 16)
        np.testing.assert_array_equal(np.concatenate([results[i] for i in range(16)]), expected)
        sizes = srv.batcher.batch_sizes()
        assert set(sizes) <= {4, 8} and max(sizes) == 8, sizes  # merged, and padded to the allowed sizes only
        assert srv.batcher.stats()["tasks"] == 16
        from prometheus_client.parser import text_string_to_metric_families

        status, text = _http(srv.rest_port, "/monitoring/prometheus/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        counts = [s for s in families[":tensorflow:serving:batching_session:batch_size"].samples
                  if s.name.endswith("_count")]
        assert sum(s.value for s in counts) == sum(sizes.values())


# --------------------------------------------------------------------------------------------------
# monitoring.config: Prometheus
# --------------------------------------------------------------------------------------------------
def test_prometheus_metrics_count_requests(store, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    install_version(store[1], tmp_path / "toy", 1)
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/metrics/tfduch" }\n')
    options = _options([ModelSource("toy", tmp_path / "toy")], monitoring=read_monitoring_config(config))
    with ModelServer(options) as srv, Client(srv.grpc_address, "toy") as c:
        for i in range(5):
            c.encode_texts([f"grpc {i}"])
        for i in range(3):
            assert _http(srv.rest_port, "/v1/models/toy:predict", {"instances": [f"rest {i}"]})[0] == 200
        with pytest.raises(ServingError):
            c.predict({"text": np.ones(2, np.float32)}, "encode_text")  # wrong dtype
        assert _http(srv.rest_port, "/v1/models/toy:predict", {"signature_name": "nope", "instances": ["a"]})[0] == 400
        status, text = _http(srv.rest_port, "/metrics/tfduch")
        assert status == 200
        assert _http(srv.rest_port, "/monitoring/prometheus/metrics")[0] == 404  # only the configured path
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {(s.labels["entrypoint"], s.labels["signature_name"], s.labels["status"]): s.value
              for s in families[":tensorflow:serving:request_count"].samples if s.name.endswith("_total")}
    assert counts == {("GRPC", "encode_text", "OK"): 5, ("REST", "serving_default", "OK"): 3,
                      ("GRPC", "encode_text", "INVALID_ARGUMENT"): 1, ("REST", "nope", "INVALID_ARGUMENT"): 1}
    latency = {s.labels["entrypoint"]: s.value for s in families[":tensorflow:serving:request_latency"].samples
               if s.name.endswith("_count") and s.labels["signature_name"] != "nope"
               and s.labels["version"] == "1"}
    assert latency["REST"] == 3 and latency["GRPC"] >= 5
    for sample in families[":tensorflow:serving:request_count"].samples:
        assert sample.labels["model_name"] == "toy"


def test_monitoring_config_rejects_bad_paths(tmp_path):
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/v1/models/x" }')
    with pytest.raises(ConfigError, match="path"):
        read_monitoring_config(config)
    config.write_text("prometheus_config { enable: true }")
    assert read_monitoring_config(config) == MonitoringOptions(True, "/monitoring/prometheus/metrics")
    assert read_monitoring_config(REPO / "serving" / "monitoring.config").enable


# --------------------------------------------------------------------------------------------------
# Warm-up
# --------------------------------------------------------------------------------------------------
def test_warmup_is_replayed_before_available(store, tmp_path):
    version = install_version(store[1], tmp_path / "toy", 1)
    write_warmup_requests(version / WARMUP_FILE, {"encode_text": {"text": np.array([b"warm", b"up"], object)},
                                                  "serving_default": {"text": np.array([b"x"], object)}})
    seen: list[tuple[str, int]] = []

    def replay_and_look(servable):
        from tfduch.serving.warmup import replay_warmup

        replay_warmup(servable)
        seen.append((manager.status("toy")[0].state, servable.warmup_requests))

    manager = ModelManager([ModelSource("toy", tmp_path / "toy")], 0, on_load=replay_and_look)
    manager.start()
    assert seen == [("LOADING", 2)]  # replayed while the version was still LOADING
    assert manager.status("toy")[0].state == "AVAILABLE" and manager.get("toy").warmup_requests == 2

    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")], rest_api_port=-1)) as srv:
        assert srv.manager.get("toy").warmup_requests == 2
    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")], rest_api_port=-1,
                              enable_model_warmup=False)) as srv:
        assert srv.manager.get("toy").warmup_requests == 0


def test_failing_warmup_fails_the_load_and_keeps_the_previous_version(store, tmp_path):
    install_version(store[1], tmp_path / "toy", 1)
    broken = install_version(store[2], tmp_path / "toy", 2)
    write_warmup_requests(broken / WARMUP_FILE, {"encode_text": {"text": np.ones(2, np.float32)}})
    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")], rest_api_port=-1)) as srv, \
            Client(srv.grpc_address, "toy") as c:
        states = {s["version"]: s for s in c.status()}
        assert states[2]["state"] == "END" and "warm-up record 0" in states[2]["error_message"]
        np.testing.assert_array_equal(c.encode_texts(TEXTS), _ref(store, 1, TEXTS))


# --------------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------------
def _pki():
    """A CA, a server certificate for 127.0.0.1 / localhost, a client certificate, and a stranger's."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject, key, issuer, issuer_key, ca=False, sans=()):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    keys = {k: ec.generate_private_key(ec.SECP256R1()) for k in ("ca", "server", "client", "other_ca", "other")}
    ca = cert("tfduch test CA", keys["ca"], "tfduch test CA", keys["ca"], ca=True)
    other_ca_key = keys["other_ca"]
    return {
        "ca": ca,
        "server_key": pem_key(keys["server"]),
        "server_cert": cert("localhost", keys["server"], "tfduch test CA", keys["ca"],
                            sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))),
        "client_key": pem_key(keys["client"]),
        "client_cert": cert("client", keys["client"], "tfduch test CA", keys["ca"]),
        "other_key": pem_key(keys["other"]),
        "other_cert": cert("intruder", keys["other"], "someone else's CA", other_ca_key),
    }


def test_mutual_tls_accepts_the_right_client_cert_and_refuses_others(store, tmp_path):
    pki = _pki()
    install_version(store[1], tmp_path / "toy", 1)
    config = tmp_path / "ssl.config"
    config.write_text(f"server_key: {json.dumps(pki['server_key'].decode())}\n"
                      f"server_cert: {json.dumps(pki['server_cert'].decode())}\n"
                      f"custom_ca: {json.dumps(pki['ca'].decode())}\nclient_verify: true\n")
    ssl = read_ssl_config(config)
    assert ssl.client_verify
    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")], rest_api_port=-1, ssl=ssl)) as srv:
        target = f"127.0.0.1:{srv.grpc_port}"
        with Client(target, "toy", root_certificates=pki["ca"], private_key=pki["client_key"],
                    certificate_chain=pki["client_cert"]) as c:
            np.testing.assert_array_equal(c.encode_texts(TEXTS), _ref(store, 1, TEXTS))
        refused = [dict(root_certificates=pki["ca"]),  # no client certificate
                   dict(root_certificates=pki["ca"], private_key=pki["other_key"],
                        certificate_chain=pki["other_cert"])]  # signed by another CA
        for kwargs in refused:
            with Client(target, "toy", retries=0, timeout=5, **kwargs) as c, pytest.raises(ServingError) as err:
                c.encode_texts(TEXTS)
            assert err.value.code == "UNAVAILABLE"
        with Client(target, "toy", retries=0, timeout=5) as plain, pytest.raises(ServingError):
            plain.encode_texts(TEXTS)  # plaintext to a TLS port


def test_ssl_config_checks(tmp_path):
    config = tmp_path / "ssl.config"
    config.write_text('server_key: "/etc/key.pem" server_cert: "/etc/cert.pem"')
    with pytest.raises(ConfigError, match="PEM text"):
        read_ssl_config(config)
    with pytest.raises(ConfigError, match="custom_ca"):
        SslOptions("-----BEGIN K", "-----BEGIN C", client_verify=True)
    with pytest.raises(ValueError, match="both"):
        Client("127.0.0.1:1", private_key=b"k")


# --------------------------------------------------------------------------------------------------
# CLI flags
# --------------------------------------------------------------------------------------------------
def test_serve_flags_read_the_config_files(tmp_path):
    from tfduch.cli import build_parser
    from tfduch.serving.cli import serve_options

    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    args = build_parser().parse_args([
        "serve", "--model_config_file", str(REPO / "serving" / "models.config"),
        "--model_config_file_poll_wait_seconds", "30", "--enable_batching",
        "--batching_parameters_file", str(REPO / "serving" / "batching.config"),
        "--monitoring_config_file", str(monitoring), "--enable_model_warmup=false"])
    options = serve_options(args)
    assert options.batching.max_batch_size == 8 and options.batching.batch_timeout_micros == 20000
    assert options.monitoring.enable and not options.enable_model_warmup
    assert options.model_config_file_poll_wait_seconds == 30 and options.models[0].labels["canary"] == 2
    assert options.host == "0.0.0.0" and options.ssl is None
    with pytest.raises(ConfigError, match="needs --enable_batching"):
        serve_options(build_parser().parse_args([
            "serve", "--model_base_path", str(tmp_path), "--batching_parameters_file",
            str(REPO / "serving" / "batching.config")]))


# --------------------------------------------------------------------------------------------------
# The deployment files
# --------------------------------------------------------------------------------------------------
def test_compose_file_and_sample_requests(store, tmp_path):
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "serving" / "compose.yaml").read_text())
    services = compose["services"]
    assert services["tensorflow-serving"]["image"].split(":")[1][0].isdigit()  # a pinned tag, not latest
    for service in services.values():
        for volume in service["volumes"]:
            local = volume.split(":")[0]
            if local.startswith("./"):
                assert (REPO / "serving" / local).is_file(), volume
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    flags = services["tensorflow-serving"]["command"]
    for flag in ("--model_config_file", "--batching_parameters_file", "--monitoring_config_file"):
        assert any(f.startswith(flag + "=") for f in flags)
        assert flag in services["tfduch-serve"]["command"][-1]
    install_version(store[1], tmp_path / "toy", 1)
    with ModelServer(_options([ModelSource("toy", tmp_path / "toy")])) as srv:
        for name in ("encode_text_instances", "encode_text_columnar"):
            body = json.loads((REPO / "serving" / "requests" / f"{name}.json").read_text())
            status, reply = _http(srv.rest_port, "/v1/models/toy:predict", body)
            texts = body.get("instances") or body["inputs"]["text"]
            codes = reply["predictions"] if "predictions" in reply else reply["outputs"]
            assert status == 200
            np.testing.assert_array_equal(codes, _ref(store, 1, texts))
        # A signature without inputs and a scalar string output (the export's metadata signature), over REST.
        body = json.loads((REPO / "serving" / "requests" / "metadata.json").read_text())
        assert _http(srv.rest_port, "/v1/models/toy:predict", body) == (200, {"outputs": '{"salt": 1}'})
        with Client(srv.grpc_address, "toy") as c:
            assert c.predict({}, "metadata")["json"].item() == b'{"salt": 1}'
    for path in (REPO / "serving" / "requests").glob("*.json"):
        assert "signature_name" in json.loads(path.read_text())


def test_list_custom_ops_finds_non_core_ops(store, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("list_custom_ops", REPO / "serving" / "list_custom_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.custom_ops(store[1]) == {}  # the toy uses core ops only
    text = pytest.importorskip("tensorflow_text")

    class Tokenize(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, x):
            return {"n": text.normalize_utf8(x, "NFD")}

    tf.saved_model.save(Tokenize(), str(tmp_path / "tok"))
    assert "NormalizeUTF8" in module.custom_ops(tmp_path / "tok")


def test_tensorflow_thread_flags_set_the_pools_before_models_load():
    """--tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (TF Serving's flags) reach TensorFlow;
    in a fresh process, because the pools can only be set before TensorFlow's runtime starts."""
    import subprocess
    import sys

    from tfduch.serving.cli import set_tensorflow_threads

    code = ("from tfduch.serving.cli import set_tensorflow_threads; import tensorflow as tf; "
            "set_tensorflow_threads(1, 2); tf.constant(1.0) + 1; "
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "2"]
    with pytest.raises(ConfigError, match="must be >= 0"):
        set_tensorflow_threads(-1, 0)


def test_batching_shares_the_cpus_among_batch_threads():
    """With batching on and no --tensorflow_intra_op_parallelism, each batch thread gets CPUs / threads."""
    from types import SimpleNamespace

    from tfduch.serving.cli import intra_op_threads

    def opts(batching: bool, threads: int) -> SimpleNamespace:
        return SimpleNamespace(enable_batching=batching, batching=BatchingOptions(num_batch_threads=threads))

    assert intra_op_threads(0, opts(True, 2), cpus=2) == 1
    assert intra_op_threads(0, opts(True, 2), cpus=8) == 4
    assert intra_op_threads(0, opts(True, 1), cpus=8) == 0  # one batch thread: TensorFlow's default pool
    assert intra_op_threads(0, opts(True, 3), cpus=2) == 1  # more threads than CPUs: still one each
    assert intra_op_threads(0, opts(False, 2), cpus=2) == 0  # no batching: TensorFlow's default
    assert intra_op_threads(3, opts(True, 2), cpus=2) == 3  # the flag wins
