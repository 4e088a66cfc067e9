"""Load an export back in process: the same codes a server returns, without a server.

``load_exported`` accepts a version directory, a model directory (newest complete version) or a base
directory holding one model (or several, with ``model_name``), and reads the metadata from
``assets.extra`` without touching the signatures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.export.graph import SIGNATURES
from tfduch.export.layout import ExportError, list_model_dirs, list_versions
from tfduch.export.metadata import read_metadata

__all__ = ["ExportedModel", "load_exported", "resolve_version_dir"]

ImageInput = bytes | str | os.PathLike


def resolve_version_dir(path: str | Path, model_name: str | None = None) -> Path:
    """The version directory ``path`` designates (see module docstring); errors say what was found."""
    root = Path(path)
    if not root.exists():
        raise ExportError(f"export path not found: {root}")
    if (root / "saved_model.pb").is_file():
        return root
    versions = list_versions(root)
    if versions:
        return root / str(versions[-1])
    models = list_model_dirs(root)
    if model_name is not None:
        if (root / model_name) in models:
            return root / model_name / str(list_versions(root / model_name)[-1])
        raise ExportError(f"{root} has no model {model_name!r} with a complete version; "
                          f"found: {', '.join(m.name for m in models) or 'none'}")
    if len(models) == 1:
        return models[0] / str(list_versions(models[0])[-1])
    if models:
        raise ExportError(f"{root} holds several models ({', '.join(m.name for m in models)}): pass model_name")
    raise ExportError(f"{root} holds no SavedModel: expected <base>/<model>/<integer version>/saved_model.pb")


def _input_list(values: Sequence[Any], what: str) -> list[Any]:
    """Reject a bare string/bytes where a list is expected (one item per character is a silent bug)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what}: pass a list, not a single {type(values).__name__}")
    return list(values)


class ExportedModel:
    """A loaded export: ``metadata`` plus encode functions returning int8 ±1 codes ``[N, K]``."""

    def __init__(self, version_dir: str | Path) -> None:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops the text signature uses)

        self.path = Path(version_dir)
        self.metadata: dict[str, Any] = read_metadata(self.path)
        self.version = int(self.path.name) if self.path.name.isdigit() else None
        self._loaded = tf.saved_model.load(str(self.path))
        self.signatures = self._loaded.signatures
        missing = sorted(set(SIGNATURES) - set(self.signatures))
        if missing:
            raise ExportError(f"{self.path} lacks the signatures {', '.join(missing)}: not a tfduch export")

    @property
    def bits(self) -> int:
        return int(self.metadata["code_length"])

    @property
    def model_id(self) -> str:
        return str(self.metadata["model_id"])

    def run_signature(self, name: str, values: Any, batch_size: int) -> dict[str, np.ndarray]:
        """Call signature ``name`` in batches; returns its ``codes`` and ``packed`` outputs."""
        import tensorflow as tf

        arg, dtype = SIGNATURES[name]
        n = len(values)
        out = {"codes": np.zeros((n, self.bits), np.int8), "packed": np.zeros((n, self.bits // 8), np.uint8)}
        fn = self.signatures[name]
        for start in range(0, n, batch_size):
            batch = tf.constant(values[start : start + batch_size], dtype=getattr(tf, dtype))
            result = fn(**{arg: batch})
            for key in out:
                out[key][start : start + batch_size] = result[key].numpy()
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Codes of raw captions (tokenized inside the graph)."""
        texts = _input_list(texts, "encode_texts")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_texts: item {bad[0]} is {type(texts[bad[0]]).__name__}, not str")
        return self.run_signature("encode_text", np.array(texts, dtype=object), batch_size)["codes"]

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 16) -> np.ndarray:
        """Codes of encoded images (bytes, or paths to JPEG/PNG/GIF/BMP/WebP files)."""
        import tensorflow as tf

        data = [item if isinstance(item, bytes) else Path(item).read_bytes()
                for item in _input_list(images, "encode_images")]
        try:
            return self.run_signature("encode_image", np.array(data, dtype=object), batch_size)["codes"]
        except tf.errors.InvalidArgumentError as exc:
            for i, blob in enumerate(data):  # name the culprit (only on the failure path)
                try:
                    tf.io.decode_image(blob, channels=3, expand_animations=False)
                except tf.errors.InvalidArgumentError:
                    raise DataError(f"encode_images: item {i} is not a decodable JPEG/PNG/GIF/BMP/WebP image "
                                    f"({len(blob)} bytes); convert it (e.g. TIFF) before sending") from exc
            raise

    def encode_features(self, features: np.ndarray, modality: str, batch_size: int = 1024) -> np.ndarray:
        """Codes of precomputed encoder features (``modality`` = ``"image"`` or ``"text"``)."""
        name = {"image": "encode_image_features", "text": "encode_text_features"}.get(modality)
        if name is None:
            raise ValueError(f"unknown modality {modality!r}: use 'image' or 'text'")
        x = np.asarray(features, dtype=np.float32)
        dim = int(self.metadata[f"{modality}_dim"])
        if x.ndim != 2 or x.shape[1] != dim:
            raise DataError(f"encode_features: {modality} features must be [N, {dim}], got {list(x.shape)}")
        return self.run_signature(name, x, batch_size)["codes"]

    def preprocess_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The encoder input float32 ``[N, S, S, 3]`` of each image: what a TFLite image model takes."""
        import tensorflow as tf

        data = [item if isinstance(item, bytes) else Path(item).read_bytes()
                for item in _input_list(images, "preprocess_images")]
        return self._loaded.preprocess_images(tf.constant(data, dtype=tf.string)).numpy()

    def __repr__(self) -> str:
        m = self.metadata
        return f"ExportedModel({self.path}, {m.get('method')}, {self.bits} bits, model_id={m.get('model_id')})"


def load_exported(path: str | Path, model_name: str | None = None) -> ExportedModel:
    """Load the export at ``path`` (version, model or base directory); newest version by default."""
    return ExportedModel(resolve_version_dir(path, model_name))
