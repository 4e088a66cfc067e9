"""Query encoders: turn captions and images into the codes an index was built with.

Two implementations of one small protocol, so the index, the CLI and the web app never care where
codes come from:

* :class:`RunEncoder` — a trained run folder (``tfduch train``): the frozen Keras encoders plus the
  run's hashing heads, with the clean-view image preprocessing of :mod:`tfduch.features.encode`
  (decode → 256 px → the run's clean view at the encoder size), so an image gets the code its cached
  features would give.
* :class:`ExportEncoder` — an exported SavedModel (:func:`tfduch.export.load_exported`), the artefact a
  serving deployment uses. TIFF images (which TensorFlow cannot decode) are converted to PNG first.

``metadata`` carries at least ``bits`` and ``model_id``; an index records them and refuses queries
from another model.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tfduch.errors import DataError, TfduchError

__all__ = ["ExportEncoder", "ImageInput", "QueryEncoder", "RunEncoder", "open_encoder", "run_model_id"]

ImageInput = bytes | str | os.PathLike


@runtime_checkable
class QueryEncoder(Protocol):
    """What the index needs from a model: codes of texts and images, and who the model is."""

    metadata: dict[str, Any]  # at least "bits" and "model_id"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """int8 ±1 codes ``[len(texts), bits]``."""
        ...

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """int8 ±1 codes ``[len(images), bits]`` of encoded image bytes or image file paths."""
        ...


def _check_list(values: Sequence[Any], what: str) -> list[Any]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what}: pass a list, not a single {type(values).__name__}")
    return list(values)


def run_model_id(run_dir: str | Path) -> str:
    """The run's ``model_id`` (:mod:`tfduch.runs`): the same id its exports and their TFLite files report."""
    from tfduch.runs import load_run

    return load_run(run_dir).model_id


class RunEncoder:
    """Codes from a trained run folder: Keras encoders (built on first use) + the run's hashing heads."""

    def __init__(self, run_dir: str | Path, batch_size: int = 32) -> None:
        from tfduch.runs import load_run

        self.run_dir = Path(run_dir).resolve()
        self.cfg, self.model, meta = load_run(self.run_dir)
        self.batch_size = int(batch_size)
        self.metadata: dict[str, Any] = {
            "bits": int(meta["bits"]),
            "model_id": str(meta["model_id"]),
            "method": meta.get("method"),
            "encoders": meta.get("encoders"),
            "dataset": meta.get("dataset"),
            "trained_at": meta.get("trained_at"),
            "source": {"kind": "run", "path": str(self.run_dir)},
        }
        self._text_encoder: Any = None
        self._image_step: Any = None

    def __repr__(self) -> str:
        return f"RunEncoder({self.run_dir}, {self.metadata['bits']} bits, model_id={self.metadata['model_id']})"

    def _check_encoder(self, modality: str, current: str) -> None:
        recorded = (self.metadata.get("encoders") or {}).get(modality)
        if recorded is not None and recorded != current:
            raise TfduchError(f"run {self.run_dir} was trained on {modality} features of encoder {recorded}, "
                              f"but the installed encoder is {current}: its codes would be meaningless")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from tfduch.encoders.minilm import build_text_encoder, encode_texts, text_encoder_id

        texts = _check_list(texts, "encode_texts")
        if not texts:
            return np.zeros((0, self.metadata["bits"]), np.int8)
        if self._text_encoder is None:
            self._check_encoder("text", text_encoder_id())
            self._text_encoder = build_text_encoder()
        features = encode_texts(self._text_encoder, [str(t) for t in texts], progress=False)
        return self.model.encode(features, "text")

    def _image_fn(self) -> Any:
        if self._image_step is None:
            import tensorflow as tf

            from tfduch.augment.image import build_image_augmentation
            from tfduch.encoders.efficientnet_lite import IMAGE_ENCODERS, build_image_encoder, image_encoder_id

            variant = self.cfg.features.image_encoder
            self._check_encoder("image", image_encoder_id(variant))
            encoder = build_image_encoder(variant, cache_dir=self.cfg.cache_root())
            view = build_image_augmentation(self.cfg.features.image_view, IMAGE_ENCODERS[variant].image_size, 0)

            @tf.function(reduce_retracing=True)
            def step(x: tf.Tensor) -> tf.Tensor:
                return encoder(view(x, training=False), training=False)

            self._image_step = step
        return self._image_step

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        import tensorflow as tf

        images = _check_list(images, "encode_images")
        step = self._image_fn()
        feats = [step(tf.constant(np.stack([_clean_source(x) for x in images[i : i + self.batch_size]]))).numpy()
                 for i in range(0, len(images), self.batch_size)]
        if not feats:
            return np.zeros((0, self.metadata["bits"]), np.int8)
        return self.model.encode(np.concatenate(feats), "image")


def _clean_source(image: ImageInput) -> np.ndarray:
    """Decode and bring to the source size exactly as the feature cache does (float32 ``[256, 256, 3]``)."""
    import tensorflow as tf

    from tfduch.data.images import load_image, load_image_bytes
    from tfduch.features.encode import SOURCE_SIZE

    array = load_image_bytes(image) if isinstance(image, bytes) else load_image(image)
    if array.shape[:2] != (SOURCE_SIZE, SOURCE_SIZE):
        array = tf.image.resize(array, (SOURCE_SIZE, SOURCE_SIZE), antialias=True).numpy()
    return array.astype(np.float32)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def _tf_decodable(image: ImageInput) -> bytes:
    """Encoded bytes TensorFlow's ``decode_image`` reads: TIFF (and unreadable-by-TF formats) → PNG."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    if data[:4] in _TIFF_MAGIC:
        from PIL import Image

        from tfduch.data.images import load_image_bytes

        buf = io.BytesIO()
        Image.fromarray(load_image_bytes(data, name=str(image) if not isinstance(image, bytes) else "<bytes>")
                        ).save(buf, format="PNG")
        data = buf.getvalue()
    return data


class ExportEncoder:
    """Codes from an exported SavedModel (``tfduch export``), via :func:`tfduch.export.load_exported`."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tfduch.export import load_exported
        except ImportError as exc:
            raise TfduchError(f"exported models need the tfduch.export module ({exc})") from None
        self.exported = load_exported(path)
        meta = dict(self.exported.metadata)
        self.metadata: dict[str, Any] = {
            "bits": int(meta.get("code_length", meta.get("bits", 0))),
            "model_id": meta.get("model_id"),
            "method": meta.get("method"),
            "encoders": meta.get("encoders"),
            "dataset": meta.get("dataset"),
            "trained_at": meta.get("trained_at"),
            "source": {"kind": "export", "path": str(Path(getattr(self.exported, "path", path)).resolve())},
        }

    def __repr__(self) -> str:
        return f"ExportEncoder({self.metadata['source']['path']}, model_id={self.metadata['model_id']})"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.exported.encode_texts(_check_list(texts, "encode_texts")), np.int8)

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        data = []
        for item in _check_list(images, "encode_images"):
            try:
                data.append(_tf_decodable(item))
            except OSError as exc:
                raise DataError(f"cannot read image {item}: {exc}") from None
        return np.asarray(self.exported.encode_images(data), np.int8)


def open_encoder(run: str | Path | None = None, export: str | Path | None = None) -> QueryEncoder:
    """The encoder of a run folder or of an export (exactly one of the two)."""
    if (run is None) == (export is None):
        raise TfduchError("give exactly one model: a trained run folder (--run) or an export (--export)")
    return RunEncoder(run) if run is not None else ExportEncoder(export)
