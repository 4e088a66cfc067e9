"""What an exported model is: code length, method, encoders, training data and a content id.

The metadata travels inside every export version (``assets.extra/tfduch_metadata.json``, a folder TF
Serving ignores and clients may read) so that anything holding codes — a client, an index — can check
that it talks to the model that produced them. ``model_id`` is the run's own (:mod:`tfduch.runs`: a
digest of the hashing heads' weights and of everything that shapes the codes), so the run, every export
of it, its TFLite files and the indexes built from any of them share it, and a retrained model never does.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from tfduch.codes import PACKING
from tfduch.config import model_fields
from tfduch.errors import TfduchError
from tfduch.runs import compute_model_id

__all__ = ["METADATA_FILE", "FORMAT_VERSION", "build_metadata", "compute_model_id", "read_metadata"]

METADATA_FILE = "assets.extra/tfduch_metadata.json"
FORMAT_VERSION = 1
# One model identity for the run, its export and its TFLite files: computed by tfduch.runs at save time.


def build_metadata(*, run_meta: dict[str, Any], config: dict[str, Any], preprocessing: dict[str, Any],
                   signatures: dict[str, Any], model_name: str, version: int) -> dict[str, Any]:
    """The metadata dict of one export version.

    ``run_meta`` is the run's ``model.json`` as loaded by :func:`tfduch.runs.load_run` and carries the run's
    ``model_id``, which the export keeps (so an index built from the run accepts the export's codes);
    ``preprocessing`` says how image bytes become encoder input; ``signatures`` documents inputs and outputs
    for clients that cannot introspect the SavedModel.
    """
    import tensorflow as tf

    import tfduch

    bits = int(run_meta["bits"])
    portable = model_fields(config)
    return {
        "format": "tfduch-export",
        "format_version": FORMAT_VERSION,
        "model_id": str(run_meta["model_id"]),
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
