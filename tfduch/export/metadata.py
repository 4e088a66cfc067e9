"""What an exported model is: code length, method, encoders, training data and a content id.

The metadata travels inside every export version (``assets.extra/tfduch_metadata.json``, a folder TF
Serving ignores and clients may read) so that anything holding codes — a client, an index — can check
that it talks to the model that produced them. ``model_id`` is a digest of the hashing heads' weights
and of everything that shapes the codes (encoders, preprocessing, config), so re-exporting the same run
gives the same id and a retrained model never does.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.codes import PACKING
from tfduch.errors import TfduchError

__all__ = ["METADATA_FILE", "FORMAT_VERSION", "build_metadata", "compute_model_id", "read_metadata"]

METADATA_FILE = "assets.extra/tfduch_metadata.json"
FORMAT_VERSION = 1
# Config fields that name places on a machine, not choices that change the model.
_MACHINE_FIELDS = (("output_dir",), ("data", "root"), ("data", "split_file"), ("features", "cache_dir"),
                   ("train", "verbose"), ("train", "tensorboard"), ("train", "checkpoint"))


def _portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved run config without paths and logging switches (they do not change the codes)."""
    out = json.loads(json.dumps(config))
    for keys in _MACHINE_FIELDS:
        section = out
        for key in keys[:-1]:
            section = section.get(key, {})
        section.pop(keys[-1], None)
    return out


def compute_model_id(weights: list[tuple[str, np.ndarray]], identity: dict[str, Any]) -> str:
    """16 hex digits of sha256 over ``identity`` (canonical JSON) and every named weight array."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
    for name, value in weights:
        array = np.ascontiguousarray(value)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def build_metadata(*, run_meta: dict[str, Any], config: dict[str, Any], weights: list[tuple[str, np.ndarray]],
                   preprocessing: dict[str, Any], signatures: dict[str, Any], model_name: str, version: int
                   ) -> dict[str, Any]:
    """The metadata dict of one export version.

    ``run_meta`` is the run's ``model.json``; ``preprocessing`` says how image bytes become encoder input
    (it is part of the id: a different resize gives different codes); ``signatures`` documents inputs
    and outputs for clients that cannot introspect the SavedModel.
    """
    import tensorflow as tf

    import tfduch

    bits = int(run_meta["bits"])
    portable = _portable_config(config)
    identity = {
        "method": run_meta.get("method"), "bits": bits, "image_dim": run_meta.get("image_dim"),
        "text_dim": run_meta.get("text_dim"), "encoders": run_meta.get("encoders"),
        "preprocessing": preprocessing, "config": portable,
    }
    return {
        "format": "tfduch-export",
        "format_version": FORMAT_VERSION,
        "model_id": compute_model_id(weights, identity),
        "model_name": model_name,
        "version": int(version),
        "method": run_meta.get("method"),
        "code_length": bits,
        "packed_bytes": bits // 8,
        "packing": PACKING,
        "sign_rule": "code = +1 where the head's output >= 0, else -1",
        "encoders": run_meta.get("encoders"),
        "image_dim": run_meta.get("image_dim"),
        "text_dim": run_meta.get("text_dim"),
        "preprocessing": preprocessing,
        "dataset": run_meta.get("dataset"),
        "dataset_fingerprint": run_meta.get("dataset_fingerprint"),
        "split_digest": run_meta.get("split_digest"),
        "num_train": run_meta.get("num_train"),
        "trained_at": run_meta.get("trained_at"),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "signatures": signatures,
        "requires": ["tensorflow_text (import before loading: the text signature tokenizes in the graph)"],
        "tfduch_version": tfduch.__version__,
        "tensorflow_version": tf.__version__,
        "config": portable,
    }


def read_metadata(version_dir: str | Path) -> dict[str, Any]:
    """The metadata of one export version; a clear error if it is missing or unreadable."""
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        raise TfduchError(f"{version_dir} has no {METADATA_FILE}: not a tfduch export (or an incomplete copy)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TfduchError(f"cannot read export metadata {path}: {exc}") from exc
