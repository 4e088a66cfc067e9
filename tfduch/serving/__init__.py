"""Serve SavedModels over the TF Serving protocol, and the gRPC client that queries them.

The real ``tensorflow_model_server`` cannot be installed here, so :class:`ModelServer` speaks the same
protocol (``tensorflow_serving.apis`` over gRPC and TF Serving's REST API) for any SavedModel in the TF
Serving layout ``<base>/<model_name>/<integer version>/``. :class:`Client` only uses the public protos,
so it works unchanged against a real TF Serving. See ``docs/serving.md``.

Heavy modules (TensorFlow, gRPC) load on first use of a name, so ``import tfduch.serving`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tfduch.serving.errors import ServingError, StatusCode

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfduch.serving' has no attribute {name!r}")
