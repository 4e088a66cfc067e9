"""Prometheus metrics of the model server, exposed as TF Serving does (``--monitoring_config_file``).

Uses the maintained ``prometheus-client`` library with a registry of its own (so two servers in one
process, as in tests, never share counts). Names are TF Serving's (``/tensorflow/serving/...`` written
as ``:tensorflow:serving:...``), with more labels so each model, version and signature can be told apart:

- ``:tensorflow:serving:request_count`` (counter; prometheus-client writes its samples as ``..._total``)
  labels ``model_name, version, signature_name, entrypoint, status``: errors by code are the non-``OK``
  ``status`` values.
- ``:tensorflow:serving:request_latency`` (histogram, microseconds as TF Serving) labels
  ``model_name, version, signature_name, API, entrypoint``.
- ``:tensorflow:serving:batching_session:batch_size`` (histogram of the merged batch sizes actually run,
  in items) labels ``model_name, version, signature_name``; only with ``--enable_batching``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["MonitoringOptions", "ServingMetrics", "CONTENT_TYPE_LATEST", "DEFAULT_METRICS_PATH"]

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
# Microseconds, 10 µs .. ~100 s in steps of ~x2.5, like TF Serving's exponential latency buckets.
_LATENCY_BUCKETS_US = tuple(10 * 2.5 ** i for i in range(18))
_BATCH_BUCKETS = tuple(2 ** i for i in range(11))


@dataclass(frozen=True)
class MonitoringOptions:
    """TF Serving's ``MonitoringConfig.prometheus_config``: whether metrics are served, and where."""

    enable: bool = False
    path: str = DEFAULT_METRICS_PATH


class ServingMetrics:
    """Request counts, latencies and batch sizes, per model / version / signature."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ["model_name", "version", "signature_name", "entrypoint", "status"], registry=self.registry)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency", "Distribution of wall time (in microseconds) for requests.",
            ["model_name", "version", "signature_name", "API", "entrypoint"], buckets=_LATENCY_BUCKETS_US,
            registry=self.registry)
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:batch_size", "Distribution of merged batch sizes (items).",
            ["model_name", "version", "signature_name"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def observe_request(self, model: str, version: str, signature: str, status: str, seconds: float,
                        entrypoint: str) -> None:
        key = (model, version, signature, entrypoint, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the update: keep each series' children
            children = self._children[key] = (
                self.request_count.labels(model, version, signature, entrypoint, status),
                self.request_latency.labels(model, version, signature, "predict", entrypoint))
        children[0].inc()
        children[1].observe(seconds * 1e6)

    def observe_batch(self, model: str, version: str, signature: str, size: int) -> None:
        self.batch_size.labels(model, version, signature).observe(size)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything counted so far."""
        return generate_latest(self.registry)
