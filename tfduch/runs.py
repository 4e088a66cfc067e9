"""Run folders: the one reader and writer of a trained model on disk, and its one identity.

A run folder holds ``config.yaml`` (the resolved :class:`~tfduch.config.Config`), ``model.json``
(what the model is: method, bits, feature sizes, encoders, data, ``model_id``), ``model.weights.h5``
(the trained weights), the protocol split and the evaluation reports. Everything that reads or
writes these files goes through this module, so there is one layout and one ``model_id``.

``model_id`` is 16 hex digits of sha256 over the model's identity (method, bits, feature sizes,
encoders and the config fields that shape the model, :data:`tfduch.config.NON_MODEL_FIELDS` left
out) and every hashing-head weight. It is computed once, when the run is saved, and stored in
``model.json``; the export, its TFLite files and every index built from the run or its export report
this same id, so codes of one trained model are recognised everywhere and a retrained model never
is. Runs saved before ``model_id`` existed get it computed (the same way) when they are loaded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.config import Config, load_config, model_fields
from tfduch.errors import TfduchError
from tfduch.io import atomic_path, atomic_write_json
from tfduch.models.base import CrossModalHasher

__all__ = [
    "CONFIG_FILE",
    "META_FILE",
    "RUN_FILES",
    "SUMMARY_FILE",
    "WEIGHTS_FILE",
    "TrainedRun",
    "compute_model_id",
    "head_weights",
    "load_run",
    "model_id_of",
    "model_identity",
    "noise_path",
    "read_run_meta",
    "save_config",
    "save_model",
    "save_summary",
    "split_path",
]

CONFIG_FILE = "config.yaml"
META_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"
SUMMARY_FILE = "summary.json"
#: The files that make a folder a finished run (what a loader needs).
RUN_FILES = (CONFIG_FILE, META_FILE, WEIGHTS_FILE)


def split_path(cfg: Config) -> Path:
    """Where the run's protocol split is kept: ``data.split_file`` or ``<output_dir>/split-seed<seed>.json``."""
    if cfg.data.split_file:
        return Path(cfg.data.split_file)
    return Path(cfg.output_dir) / f"split-seed{cfg.data.split_seed}.json"


def noise_path(cfg: Config) -> Path:
    """Where the run's caption noise / clean subset is kept: ``noise.file`` or a name from its settings."""
    if cfg.noise.file:
        return Path(cfg.noise.file)
    return Path(cfg.output_dir) / f"noise-p{cfg.noise.p:g}-seed{cfg.noise.seed}.json"


def head_weights(model: CrossModalHasher) -> list[tuple[str, np.ndarray]]:
    """The hashing heads' weights by variable path: everything that turns features into codes."""
    return [(v.path, np.asarray(v.numpy())) for v in model.image_head.weights + model.text_head.weights]


def model_identity(meta: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """What, besides the weights, decides a model's codes: method, sizes, encoders, model-shaping config."""
    return {"method": meta.get("method"), "bits": int(meta["bits"]), "image_dim": meta.get("image_dim"),
            "text_dim": meta.get("text_dim"), "encoders": meta.get("encoders"), "config": model_fields(dict(config))}


def compute_model_id(weights: list[tuple[str, np.ndarray]], identity: Mapping[str, Any]) -> str:
    """16 hex digits of sha256 over ``identity`` (canonical JSON) and every named weight array."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
    for name, value in weights:
        array = np.ascontiguousarray(value)
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def model_id_of(model: CrossModalHasher, meta: Mapping[str, Any], cfg: Config) -> str:
    """The ``model_id`` of a trained model described by ``meta`` (``model.json`` fields) and ``cfg``."""
    return compute_model_id(head_weights(model), model_identity(meta, cfg.to_dict()))


def save_config(cfg: Config, out_dir: str | Path) -> Path:
    """Write the resolved config as ``<out_dir>/config.yaml`` (atomic)."""
    path = Path(out_dir) / CONFIG_FILE
    cfg.save(path)
    return path


def save_model(model: CrossModalHasher, cfg: Config, out_dir: str | Path, *, num_train: int,
               encoders: Mapping[str, str], dataset: str, dataset_fingerprint: str, split_digest: str,
               train_seconds: float | None = None) -> dict[str, Any]:
    """Write the weights and ``model.json`` (with the model's ``model_id``), atomically; returns the metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    meta: dict[str, Any] = {
        "method": cfg.model.method,
        "bits": model.bits,
        "image_dim": model.image_dim,
        "text_dim": model.text_dim,
        "num_train": int(num_train),
        "encoders": dict(encoders),
        "dataset": dataset,
        "dataset_fingerprint": dataset_fingerprint,
        "split_digest": split_digest,
        "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": train_seconds,
    }
    meta["model_id"] = model_id_of(model, meta, cfg)
    atomic_write_json(out / META_FILE, meta)
    return meta


def save_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write the run's ``summary.json`` (training summary + headline metrics), atomically."""
    path = Path(out_dir) / SUMMARY_FILE
    atomic_write_json(path, dict(summary))
    return path


def _check_run(run: Path) -> None:
    missing = [n for n in RUN_FILES if not (run / n).is_file()]
    if missing:
        raise TfduchError(f"{run} is not a finished run folder: missing {', '.join(missing)}")


def read_run_meta(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``model.json`` as saved (a clear error when the folder is not a finished run)."""
    run = Path(run_dir)
    _check_run(run)
    try:
        meta = json.loads((run / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TfduchError(f"cannot read {run / META_FILE}: {exc}") from exc
    if not isinstance(meta, dict) or "bits" not in meta:
        raise TfduchError(f"{run / META_FILE} is not a tfduch model description (no 'bits')")
    return meta


@dataclass
class TrainedRun:
    """A loaded run: its resolved config, the model with trained weights and its ``model.json`` metadata."""

    path: Path
    config: Config
    model: CrossModalHasher
    meta: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    def __iter__(self):  # noqa: ANN204  (unpacks as (config, model, meta), the shape callers use)
        return iter((self.config, self.model, self.meta))


def load_run(run_dir: str | Path) -> TrainedRun:
    """A finished run folder loaded for inference (``model_id`` computed here for runs saved without one)."""
    from tfduch.training.trainer import ModelShape, build_model

    run = Path(run_dir)
    _check_run(run)
    # Inference needs no cluster: a run trained with train.strategy=multiworker is loaded on this device.
    cfg = load_config(run / CONFIG_FILE, [f"output_dir={run}", "train.strategy=default"])
    meta = read_run_meta(run)
    model = build_model(cfg, ModelShape(meta["image_dim"], meta["text_dim"], meta["num_train"]))
    model.load_weights(run / WEIGHTS_FILE)
    if not meta.get("model_id"):
        meta["model_id"] = model_id_of(model, meta, load_config(run / CONFIG_FILE))
    return TrainedRun(run, cfg, model, meta)
