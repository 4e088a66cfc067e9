"""Write a trained run as a TF Serving SavedModel version: atomic, with metadata, warm-up and TFLite files.

One version folder holds the serving graph of :mod:`tfduch.export.graph` (four encoding signatures and
``metadata``), ``assets.extra/tfduch_metadata.json`` (the same JSON the ``metadata`` signature returns),
``assets.extra/tf_serving_warmup_requests`` (:mod:`tfduch.export.warmup`) and, when asked, the TFLite image
models of :mod:`tfduch.export.tflite`. It is built in a hidden temp folder and renamed into place
(:func:`tfduch.export.layout.write_version`), so a server never sees half a version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from tfduch.export import graph as _graph
from tfduch.export.graph import *  # noqa: F403  (the graph's public names are re-exported; see __all__)
from tfduch.export.graph import CodeExport, Encoders
from tfduch.export.layout import (
    ExportError,
    check_model_name,
    next_version,
    write_models_config,
    write_version,
)
from tfduch.export.metadata import METADATA_FILE, build_metadata
from tfduch.export.tflite import TFLiteOptions, write_tflite
from tfduch.export.warmup import write_warmup_requests
from tfduch.features.encode import SOURCE_SIZE
from tfduch.io import atomic_write_json

# The graph's names are re-exported here (callers of the writer look for them here too); their list
# lives once, in graph.
__all__ = [*_graph.__all__, "export_model"]


def _load_run(run_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    from tfduch.errors import TfduchError
    from tfduch.runs import load_run

    run = Path(run_dir)
    if not run.is_dir():
        raise ExportError(f"run folder not found: {run}")
    try:
        return tuple(load_run(run))
    except TfduchError as exc:
        raise ExportError(f"cannot export {run}: {exc}") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot export {run}: its model files are unreadable ({exc})") from exc


def _check_encoders(run: Path, run_meta: dict[str, Any], encoders: Encoders, model: Any) -> None:
    """The served encoders must be the ones the training features came from, else codes drift silently."""
    for modality in ("image", "text"):
        trained = (run_meta.get("encoders") or {}).get(modality)
        installed = encoders.ids.get(modality)
        if trained and installed and trained != installed:
            raise ExportError(f"{run} was trained on {modality} features of encoder {trained!r}, but the "
                              f"installed encoder is {installed!r}: its codes would not match; retrain the run")
    dims = {"image": (model.image_dim, int(encoders.image.output_shape[-1])),
            "text": (model.text_dim, int(encoders.text.output_shape[-1]))}
    for modality, (trained_dim, encoder_dim) in dims.items():
        if trained_dim != encoder_dim:
            raise ExportError(f"{run} has a {modality} head for {trained_dim}-d features but the {modality} "
                              f"encoder gives {encoder_dim}-d: it was not trained on these encoders")


def export_model(run_dir: str | Path, base_dir: str | Path, model_name: str = "tfduch", version: int | None = None,
                 *, encoders: Encoders | None = None, tflite: TFLiteOptions | None = None,
                 serving_base_path: str | None = None) -> Path:
    """Write the run's model as ``<base_dir>/<model_name>/<version>/`` (atomic) and refresh ``models.config``.

    ``version`` defaults to the largest existing one + 1. ``encoders`` reuses already built encoders
    (tests, repeated exports); ``tflite`` (:class:`tfduch.export.tflite.TFLiteOptions`) adds TFLite image
    models under ``assets.extra/tflite/``; a variant below its bit-agreement floor fails the export with
    :class:`~tfduch.export.tflite.VariantRefused` and no version appears (or is left out, with
    ``on_below_floor="skip"``, and listed under ``tflite_refused`` in the metadata). Returns the version
    directory.
    """
    check_model_name(model_name)
    model_dir = Path(base_dir) / model_name
    if version is not None and (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} already exists: versions are immutable, pick another version")
    run = Path(run_dir)
    cfg, model, run_meta = _load_run(run)
    encoders = encoders or Encoders.build(cfg.features.image_encoder, cfg.cache_root())
    if encoders.variant != cfg.features.image_encoder:
        raise ExportError(f"{run} uses image encoder {cfg.features.image_encoder!r}, got {encoders.variant!r}")
    _check_encoders(run, run_meta, encoders, model)
    module = CodeExport(model.image_head, model.text_head, encoders, cfg.features.image_view)
    version = next_version(model_dir) if version is None else version
    metadata = build_metadata(run_meta=run_meta, config=cfg.to_dict(), preprocessing=module.preprocessing(),
                              signatures=module.describe(), model_name=model_name, version=version)

    def build(tmp: Path) -> None:
        # TFLite first: its entries belong to the metadata that the `metadata` signature then embeds.
        if tflite is not None:
            entries, refused = write_tflite(module, tmp / "assets.extra" / "tflite", tflite,
                                            model_id=metadata["model_id"])
            # Each TFLite file is the run's model too: it reports the run's model_id.
            metadata["tflite"] = {k: {**v, "model_id": metadata["model_id"]} for k, v in entries.items()}
            if refused:
                metadata["tflite_refused"] = refused
        atomic_write_json(tmp / METADATA_FILE, metadata)
        module.attach_metadata((tmp / METADATA_FILE).read_text(encoding="utf-8"))
        signatures = module.signatures()
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        write_warmup_requests(tmp, model_name, signatures, SOURCE_SIZE)

    path = write_version(model_dir, version, build)
    write_models_config(base_dir, serving_base_path)
    return path

