"""TF Serving's text-proto config files that its pip package does not ship: batching, monitoring, SSL.

``tensorflow-serving-api`` 2.21 has ``model_server_config_pb2`` (``models.config``, read in
:mod:`tfduch.serving.models`) but not ``session_bundle_config_pb2`` (``BatchingParameters``),
``monitoring_config_pb2`` or ``ssl_config_pb2``. Rather than parse these by hand, the three message
definitions are declared here as descriptors (same package, message, field names and numbers as TF
Serving's ``.proto`` files) in a private descriptor pool, and the files are parsed with protobuf's own
``text_format``, so a file that ``tensorflow_model_server`` accepts parses the same way here and a typo
is a ``ParseError`` naming the line. No ``protoc`` / ``grpcio-tools`` build step is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf.message_factory import GetMessageClass

from tfduch.errors import ConfigError
from tfduch.serving.batching import BatchingOptions
from tfduch.serving.metrics import DEFAULT_METRICS_PATH, MonitoringOptions

__all__ = ["SslOptions", "BatchingParameters", "MonitoringConfig", "SSLConfig", "read_batching_parameters",
           "read_monitoring_config", "read_ssl_config", "parse_text_proto"]

log = logging.getLogger("tfduch.serving")

_F = descriptor_pb2.FieldDescriptorProto
# (name, number, type, label, message type) as in TF Serving's session_bundle_config.proto,
# monitoring_config.proto and ssl_config.proto (package tensorflow.serving).
_INT64 = (_F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
_STRING = (_F.TYPE_MESSAGE, ".google.protobuf.StringValue")
_MESSAGES: dict[str, list[tuple[str, int, int, str, int]]] = {
    "BatchingParameters": [
        ("max_batch_size", 1, *_INT64, _F.LABEL_OPTIONAL),
        ("batch_timeout_micros", 2, *_INT64, _F.LABEL_OPTIONAL),
        ("num_batch_threads", 3, *_INT64, _F.LABEL_OPTIONAL),
        ("max_enqueued_batches", 4, *_INT64, _F.LABEL_OPTIONAL),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, "", _F.LABEL_REPEATED),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
        ("thread_pool_name", 8, *_STRING, _F.LABEL_OPTIONAL),
        ("enable_large_batch_splitting", 9, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
        ("max_execution_batch_size", 10, *_INT64, _F.LABEL_OPTIONAL),
    ],
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
        ("path", 2, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", _F.LABEL_OPTIONAL),
    ],
    "SSLConfig": [
        ("server_key", 1, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
        ("server_cert", 2, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
        ("custom_ca", 3, _F.TYPE_STRING, "", _F.LABEL_OPTIONAL),
        ("client_verify", 4, _F.TYPE_BOOL, "", _F.LABEL_OPTIONAL),
    ],
}
# Fields TF Serving has that this server reads but does not act on (logged once per file).
_IGNORED_BATCHING = ("thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size")


def _build_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(name="tfduch/serving/tf_serving_configs.proto",
                                              package="tensorflow.serving", syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    for message, fields in _MESSAGES.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, type_name, label in fields:
            field = proto.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file)
    return {name: GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}")) for name in _MESSAGES}


_CLASSES = _build_classes()
BatchingParameters = _CLASSES["BatchingParameters"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
SSLConfig = _CLASSES["SSLConfig"]


def parse_text_proto(path: str | Path, message: Any, what: str) -> Any:
    """``path``'s text proto merged into ``message``; any error is a :class:`ConfigError` naming the file."""
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), message)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    return message


def read_batching_parameters(path: str | Path, base: BatchingOptions | None = None) -> BatchingOptions:
    """``--batching_parameters_file`` as :class:`BatchingOptions`; fields the file leaves out keep ``base``.

    TF Serving's rules are checked: ``allowed_batch_sizes`` must increase and end at ``max_batch_size``.
    """
    params = parse_text_proto(path, BatchingParameters(), "batching parameters file")
    base = base or BatchingOptions()
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name):
            values[name] = int(getattr(params, name).value)
    values["allowed_batch_sizes"] = tuple(int(v) for v in params.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = bool(params.pad_variable_length_inputs)
    ignored = [field.name for field, _ in params.ListFields() if field.name in _IGNORED_BATCHING]
    if ignored:
        log.warning("%s: %s read but not used by tfduch serve", path, ", ".join(ignored))
    try:
        return BatchingOptions(**{**base.get_config(), **values})
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_monitoring_config(path: str | Path) -> MonitoringOptions:
    """``--monitoring_config_file`` as :class:`MonitoringOptions` (TF Serving's default path if unset)."""
    config = parse_text_proto(path, MonitoringConfig(), "monitoring config file")
    prometheus = config.prometheus_config
    route = prometheus.path or DEFAULT_METRICS_PATH
    if not route.startswith("/") or route.startswith("/v1/"):
        raise ConfigError(f"{path}: prometheus_config.path must start with '/' and not with /v1/, got {route!r}")
    return MonitoringOptions(enable=bool(prometheus.enable), path=route)


class SslOptions:
    """TF Serving's ``SSLConfig``: PEM server key and certificate, optional client CA, client verification.

    As in TF Serving the fields hold the PEM text itself. ``client_verify`` (mutual TLS) needs
    ``custom_ca``: clients must present a certificate signed by it.
    """

    def __init__(self, server_key: str, server_cert: str, custom_ca: str = "", client_verify: bool = False) -> None:
        if not server_key.strip() or not server_cert.strip():
            raise ConfigError("SSL config needs server_key and server_cert (PEM text)")
        if client_verify and not custom_ca.strip():
            raise ConfigError("SSL config: client_verify: true needs custom_ca (the CA that signs client certs)")
        for name, value in (("server_key", server_key), ("server_cert", server_cert), ("custom_ca", custom_ca)):
            if value.strip() and "-----BEGIN" not in value:
                raise ConfigError(f"SSL config: {name} must be PEM text (-----BEGIN ...), as in TF Serving, "
                                  "not a file name")
        self.server_key, self.server_cert = server_key, server_cert
        self.custom_ca, self.client_verify = custom_ca, client_verify


def read_ssl_config(path: str | Path) -> SslOptions:
    """``--ssl_config_file`` as :class:`SslOptions`."""
    config = parse_text_proto(path, SSLConfig(), "SSL config file")
    try:
        return SslOptions(config.server_key, config.server_cert, config.custom_ca, config.client_verify)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
