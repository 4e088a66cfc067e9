"""Export trained models for serving: TF Serving SavedModels that emit binary codes, TFLite for the edge.

Modules, each one concept, imported one way (no cycles): ``layout`` (version folders, ``models.config``) and
``metadata`` (the id and description) ← ``graph`` (the serving ``tf.Module``) ← ``calibration`` /
``bias_correction`` ← ``tflite`` (convert, check floors) ← ``warmup`` / ``savedmodel`` (the atomic writer) ←
``edge_config`` / ``cli``; ``loaded`` reads exports back. Layout and signatures are the serving contract of
``docs/ARCHITECTURE.md``; ``docs/export.md`` shows how to serve an export with the real
``tensorflow_model_server`` or ``tfduch serve``. Names are imported
lazily, so the layout helpers (and ``tfduch --help``) do not pay for importing TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tfduch.export.layout": ("ExportError", "MODELS_CONFIG", "list_model_dirs", "list_versions",
                             "models_config_text", "next_version", "write_models_config", "write_version"),
    "tfduch.export.metadata": ("METADATA_FILE", "build_metadata", "compute_model_id", "read_metadata"),
    "tfduch.export.graph": ("CodeExport", "DEFAULT_SIGNATURE", "Encoders", "METADATA_OUTPUT", "METADATA_SIGNATURE",
                            "SIGNATURES", "binarize", "decode_images", "pack_codes"),
    "tfduch.export.savedmodel": ("export_model",),
    "tfduch.export.warmup": ("WARMUP_FILE", "read_warmup_requests"),
    "tfduch.export.loaded": ("ExportedModel", "load_exported", "resolve_version_dir"),
    "tfduch.export.tflite": ("TFLiteImageEncoder", "TFLiteOptions", "TFLITE_VARIANTS", "VariantRefused"),
    "tfduch.export.edge_config": ("EDGE_CONFIG", "load_edge_config"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tfduch.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
