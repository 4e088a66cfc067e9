"""The model server: one :class:`~tfduch.serving.core.ServingCore` under the gRPC and REST front ends.

:class:`ModelServer` wires the pieces TF Serving's ``tensorflow_model_server`` has: the model manager
(version policy, labels, hot reload of version folders and of ``--model_config_file``), warm-up replay,
the batch scheduler, Prometheus metrics, and TLS on the gRPC port. The front ends live in
:mod:`~tfduch.serving.grpc_api` and :mod:`~tfduch.serving.rest` and import only the core.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tfduch.errors import ConfigError
from tfduch.serving.batching import BatchingOptions, BatchScheduler
from tfduch.serving.configs import SslOptions
from tfduch.serving.core import SIGNATURE_DEF_FIELD, ModelSpec, ServingCore, model_metadata, model_status
from tfduch.serving.grpc_api import GRPC_OPTIONS, ModelServicer, PredictionServicer, start_grpc_server
from tfduch.serving.metrics import MonitoringOptions, ServingMetrics
from tfduch.serving.models import ModelManager, ModelSource, RequestLimits, SignatureRunner, read_model_config_file
from tfduch.serving.warmup import replay_warmup

__all__ = ["ServerOptions", "ServingCore", "ModelServer", "ModelSpec", "PredictionServicer", "ModelServicer",
           "model_metadata", "model_status", "single_model_options", "SIGNATURE_DEF_FIELD", "GRPC_OPTIONS"]

log = logging.getLogger("tfduch.serving")


@dataclass
class ServerOptions:
    """Everything ``tfduch serve`` configures (flag names follow ``tensorflow_model_server``).

    Ports: ``0`` picks a free port (read it back from :class:`ModelServer`); ``rest_api_port=-1``
    disables REST. ``file_system_poll_wait_seconds <= 0`` loads once and never polls again.
    ``model_config_file``: re-read every ``model_config_file_poll_wait_seconds`` (> 0) so models and
    labels can change without a restart; ``models`` is what it held at start.
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
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    enable_model_warmup: bool = True
    monitoring: MonitoringOptions = field(default_factory=MonitoringOptions)
    ssl: SslOptions | None = None

    def get_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["models"] = [{"name": m.name, "base_path": str(m.base_path), "policy": str(m.policy),
                             "labels": dict(m.labels)} for m in self.models]
        config["ssl"] = None if self.ssl is None else {"client_verify": self.ssl.client_verify}
        return config


class ModelServer:
    """gRPC + REST front ends, the model manager and (optionally) the batch scheduler, in one process.

    >>> server = ModelServer(ServerOptions([ModelSource("tfduch", Path("/exports/tfduch"))], port=0)).start()
    >>> server.grpc_address   # '0.0.0.0:41231'
    >>> server.stop()
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        # Counted only when served (--monitoring_config_file with enable: true): no cost otherwise.
        self.metrics = ServingMetrics() if options.monitoring.enable else None
        self.manager = ModelManager(options.models, options.file_system_poll_wait_seconds, options.limits,
                                    on_load=replay_warmup if options.enable_model_warmup else None)
        self.batcher: BatchScheduler | None = None
        self.core = ServingCore(self.manager, metrics=self.metrics)
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._rest: Any = None
        self._stopped = threading.Event()
        self._config_stop = threading.Event()
        self._config_thread: threading.Thread | None = None
        self._config_text: str | None = None

    @property
    def grpc_address(self) -> str:
        return f"{self.options.host}:{self.grpc_port}"

    def start(self) -> ModelServer:
        """Load (and warm up) the current versions, then listen; returns once both front ends accept requests."""
        self.manager.start()
        for source in self.options.models:
            if not self.manager.loaded_versions(source.name):
                log.warning("model %s: no loadable version under %s yet; polling", source.name, source.base_path)
        if self.options.enable_batching:
            self.batcher = self.core.batcher = BatchScheduler(self.options.batching, on_batch=self._batch_metric)
        try:
            self._grpc, self.grpc_port = start_grpc_server(
                self.core, f"{self.options.host}:{self.options.port}", self.options.grpc_max_threads,
                self.options.ssl)
            if self.options.rest_api_port >= 0:
                from tfduch.serving.rest import RestServer

                self._rest = RestServer(self.core, self.options.host, self.options.rest_api_port, self.metrics,
                                        self.options.monitoring).start()
                self.rest_port = self._rest.port
                log.info("REST API listening on http://%s:%d/v1/models/...", self.options.host, self.rest_port)
        except BaseException:
            self.stop(grace=None)
            raise
        self._start_config_polling()
        return self

    def _batch_metric(self, runner: SignatureRunner, size: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(runner.model, str(runner.version), runner.name, size)

    # -- --model_config_file re-reading --------------------------------------------------------------
    def _start_config_polling(self) -> None:
        path, wait = self.options.model_config_file, self.options.model_config_file_poll_wait_seconds
        if path is None or wait <= 0:
            return
        self._config_text = _read_text(path)
        self._config_thread = threading.Thread(target=self._poll_config, args=(path, wait),
                                               name="tfduch-config-poller", daemon=True)
        self._config_thread.start()

    def _poll_config(self, path: Path, wait: float) -> None:
        while not self._config_stop.wait(wait):
            self.reload_config()

    def reload_config(self) -> bool:
        """Re-read ``--model_config_file``; apply it if it changed. A broken file is logged and the
        current config keeps serving (as TF Serving). Returns whether a new config was applied."""
        path = self.options.model_config_file
        if path is None:
            return False
        text = _read_text(path)
        if text is None or text == self._config_text:
            return False
        try:
            sources = read_model_config_file(path)
        except ConfigError as exc:
            log.error("model config file %s not applied (keeping the current one): %s", path, exc)
            self._config_text = text  # log once per change
            return False
        self._config_text = text
        log.info("model config file %s changed: serving %s", path, ", ".join(s.name for s in sources))
        self.manager.update_sources(sources)
        self.options.models = sources
        return True

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` s), stop polling."""
        self._config_stop.set()
        if self._config_thread is not None:
            self._config_thread.join(timeout=30)
            self._config_thread = None
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


def _read_text(path: Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        log.error("cannot read model config file %s: %s", path, exc)
        return None


def single_model_options(model_name: str, base_path: str | Path, **kwargs: Any) -> ServerOptions:
    """Options serving one model (TF Serving's ``--model_name`` + ``--model_base_path``)."""
    policy = kwargs.pop("policy", None)
    source = ModelSource(model_name, Path(base_path)) if policy is None else \
        ModelSource(model_name, Path(base_path), policy)
    return ServerOptions(models=[source], **kwargs)
