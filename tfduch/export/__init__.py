"""Export trained models for serving: TF Serving SavedModels that emit binary codes, TFLite for the edge.

Layout and signatures are the serving contract of ``docs/ARCHITECTURE.md``; ``export/README.md`` shows
how to serve an export with the real ``tensorflow_model_server`` or ``tfduch serve``. Names are imported
lazily, so the layout helpers (and ``tfduch --help``) do not pay for importing TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tfduch.export.layout": ("ExportError", "MODELS_CONFIG", "list_model_dirs", "list_versions",
                             "models_config_text", "next_version", "write_models_config", "write_version"),
    "tfduch.export.metadata": ("METADATA_FILE", "build_metadata", "compute_model_id", "read_metadata"),
    "tfduch.export.savedmodel": ("CodeExport", "DEFAULT_SIGNATURE", "Encoders", "SIGNATURES", "binarize",
                                 "decode_images", "export_model", "pack_codes"),
    "tfduch.export.loaded": ("ExportedModel", "load_exported", "resolve_version_dir"),
    "tfduch.export.tflite": ("TFLiteImageEncoder", "TFLiteOptions", "TFLITE_VARIANTS"),
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
