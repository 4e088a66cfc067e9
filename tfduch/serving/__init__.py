"""Serve SavedModels over the TF Serving protocol, and the gRPC client that queries them.

The real ``tensorflow_model_server`` cannot be installed here, so :class:`ModelServer` speaks the same
protocol (``tensorflow_serving.apis`` over gRPC and TF Serving's REST API) for any SavedModel in the TF
Serving layout ``<base>/<model_name>/<integer version>/``. :class:`Client` only uses the public protos,
so it works unchanged against a real TF Serving. See ``serving/README.md``.

Heavy modules (TensorFlow, gRPC) load on first use of a name, so ``import tfduch.serving`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tfduch.errors import TfduchError

if TYPE_CHECKING:  # pragma: no cover
    from tfduch.serving.client import Client, ModelMetadata
    from tfduch.serving.server import ModelServer, ServerOptions

__all__ = ["ServingError", "StatusCode", "Client", "ModelMetadata", "ModelServer", "ServerOptions"]

_LAZY = {
    "Client": "tfduch.serving.client",
    "ModelMetadata": "tfduch.serving.client",
    "ModelServer": "tfduch.serving.server",
    "ServerOptions": "tfduch.serving.server",
}


class StatusCode:
    """gRPC / TF Serving status code names (the values of ``grpc.StatusCode``'s names)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"


class ServingError(TfduchError):
    """A request failed with a TF Serving status: raised by the server core, re-raised by the client.

    ``code`` is the status name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...), the same on both sides, so
    callers can branch on it without importing gRPC.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfduch.serving' has no attribute {name!r}")
