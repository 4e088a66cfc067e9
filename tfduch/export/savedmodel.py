"""Build and write the serving SavedModel: raw captions / image bytes / features → binary codes.

Everything that turns an input into a code runs inside the graph, with the same ops the training
features went through, so a served code equals the in-memory model's code bit for bit:

- text: the MiniLM encoder (tensorflow-text tokenizer in the graph, its ``vocab.txt`` an asset) → text
  head → sign;
- image: ``tf.io.decode_image`` → resize to the feature cache's source size (256, antialiased bilinear,
  only when the image is not already 256×256, as :mod:`tfduch.features.encode` does) → the run's clean
  view preset (``none``: resize to the encoder size) → EfficientNet-Lite → image head → sign;
- features: head → sign, for users with a feature cache.

Signatures and the packing of ``packed`` are the serving contract of ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfduch.codes import tf_pack, tf_sign
from tfduch.export.layout import (
    ExportError,
    check_model_name,
    next_version,
    write_models_config,
    write_version,
)
from tfduch.export.metadata import METADATA_FILE, build_metadata
from tfduch.features.encode import SOURCE_SIZE
from tfduch.io import atomic_write_json

__all__ = [
    "SIGNATURES",
    "DEFAULT_SIGNATURE",
    "DETERMINISTIC_VIEWS",
    "Encoders",
    "CodeExport",
    "binarize",
    "pack_codes",
    "decode_images",
    "export_model",
]

DEFAULT_SIGNATURE = "encode_text"
# signature name -> (input name, input dtype)
SIGNATURES: dict[str, tuple[str, str]] = {
    "encode_text": ("text", "string"),
    "encode_image": ("image_bytes", "string"),
    "encode_image_features": ("features", "float32"),
    "encode_text_features": ("features", "float32"),
}
# Clean-view presets without randomness: the only ones a served model can reproduce.
DETERMINISTIC_VIEWS = ("none", "center_crop")


@dataclass
class Encoders:
    """The frozen encoders an export wraps (built once and reusable across exports)."""

    image: keras.Model
    text: keras.Model
    variant: str = "lite0"
    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, variant: str = "lite0-ms", cache_dir: str | Path | None = None) -> Encoders:
        from tfduch.encoders.efficientnet_lite import build_image_encoder, image_encoder_id
        from tfduch.encoders.minilm import build_text_encoder, text_encoder_id

        return cls(build_image_encoder(variant, cache_dir=cache_dir), build_text_encoder(), variant,
                   {"image": image_encoder_id(variant), "text": text_encoder_id()})

    @property
    def image_size(self) -> int:
        return int(self.image.input_shape[1])


# The in-graph sign and packing are tfduch.codes' (one convention for every code in the project).
binarize = tf_sign
pack_codes = tf_pack


def decode_images(image_bytes: tf.Tensor, source_size: int = SOURCE_SIZE) -> tf.Tensor:
    """Encoded images ``string [B]`` → float32 ``[B, s, s, 3]`` in 0..255, as the feature cache loads files.

    ``tf.io.decode_image`` reads JPEG, PNG, GIF (first frame), BMP and WebP; TIFF is not decodable by TF
    ops and must be converted by the client (or encoded through the features signatures).
    """
    s = int(source_size)

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3])
        shape = tf.shape(image)
        same = tf.logical_and(tf.equal(shape[0], s), tf.equal(shape[1], s))
        image = tf.cond(same, lambda: tf.cast(image, tf.float32),
                        lambda: tf.image.resize(image, (s, s), antialias=True))
        return tf.ensure_shape(image, [s, s, 3])

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([s, s, 3], tf.float32))


def _outputs(h: tf.Tensor) -> dict[str, tf.Tensor]:
    codes = binarize(h)
    return {"codes": codes, "packed": pack_codes(codes)}


class CodeExport(tf.Module):
    """The four serving functions over one trained model's heads and the frozen encoders."""

    def __init__(self, image_head: keras.Model, text_head: keras.Model, encoders: Encoders,
                 image_view: str = "none") -> None:
        from tfduch.augment.image import build_image_augmentation

        super().__init__(name="tfduch_export")
        if image_view not in DETERMINISTIC_VIEWS:
            raise ExportError(f"the run's clean image view {image_view!r} is random; a served model can only "
                              f"reproduce {', '.join(DETERMINISTIC_VIEWS)}")
        bits = int(image_head.output_shape[-1])
        if bits % 8:
            raise ExportError(f"code length {bits} is not a multiple of 8: 'packed' needs whole bytes")
        self.bits, self.image_view = bits, image_view
        self.image_head, self.text_head = image_head, text_head
        self.image_encoder, self.text_encoder = encoders.image, encoders.text
        # Held explicitly so the vocabulary table (and its vocab.txt asset) is saved with the module.
        self.vocabulary = encoders.text.get_layer("tokenizer").wordpiece
        self.image_size = encoders.image_size
        self.clean_view = build_image_augmentation(image_view, self.image_size, seed=0)
        image_dim, text_dim = int(image_head.input_shape[-1]), int(text_head.input_shape[-1])
        self.encode_text = tf.function(self._encode_text, input_signature=[
            tf.TensorSpec([None], tf.string, name="text")])
        self.encode_image = tf.function(self._encode_image, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.encode_image_features = tf.function(self._encode_image_features, input_signature=[
            tf.TensorSpec([None, image_dim], tf.float32, name="features")])
        self.encode_text_features = tf.function(self._encode_text_features, input_signature=[
            tf.TensorSpec([None, text_dim], tf.float32, name="features")])
        self.preprocess_images = tf.function(self._preprocess_images, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])

    def _preprocess_images(self, image_bytes: tf.Tensor) -> tf.Tensor:
        """Image bytes → the encoder's float32 ``[B, S, S, 3]`` input (the feature cache's clean view)."""
        return self.clean_view(decode_images(image_bytes), training=False)

    def _encode_text(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(self.text_head(self.text_encoder(text, training=False), training=False))

    def _encode_image(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        features = self.image_encoder(self._preprocess_images(image_bytes), training=False)
        return _outputs(self.image_head(features, training=False))

    def _encode_image_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(self.image_head(features, training=False))

    def _encode_text_features(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(self.text_head(features, training=False))

    def signatures(self) -> dict[str, Any]:
        """Concrete functions keyed by signature name, ``serving_default`` = the text signature."""
        out = {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
        out["serving_default"] = out[DEFAULT_SIGNATURE]
        return out

    def describe(self) -> dict[str, Any]:
        """Inputs and outputs of every signature, for the metadata and the CLI."""
        dims = {"encode_image_features": int(self.image_head.input_shape[-1]),
                "encode_text_features": int(self.text_head.input_shape[-1])}
        out: dict[str, Any] = {}
        for name, (arg, dtype) in SIGNATURES.items():
            shape = f"[None, {dims[name]}]" if name in dims else "[None]"
            out[name] = {"inputs": {arg: f"{dtype} {shape}"},
                         "outputs": {"codes": f"int8 [None, {self.bits}]", "packed": f"uint8 [None, {self.bits // 8}]"}}
        out["serving_default"] = DEFAULT_SIGNATURE
        return out

    def preprocessing(self) -> dict[str, Any]:
        return {"decode": "tf.io.decode_image, channels=3 (JPEG, PNG, GIF first frame, BMP, WebP; not TIFF)",
                "source_size": SOURCE_SIZE,
                "source_resize": "bilinear, antialias, float (skipped when already source_size x source_size)",
                "clean_view": self.image_view, "image_size": self.image_size,
                "encoder_input": "float32 RGB 0..255 [B, S, S, 3]"}


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
                 *, encoders: Encoders | None = None, tflite: Any | None = None,
                 serving_base_path: str | None = None) -> Path:
    """Write the run's model as ``<base_dir>/<model_name>/<version>/`` (atomic) and refresh ``models.config``.

    ``version`` defaults to the largest existing one + 1. ``encoders`` reuses already built encoders
    (tests, repeated exports); ``tflite`` (:class:`tfduch.export.tflite.TFLiteOptions`) adds TFLite image
    models under ``assets.extra/tflite/``. Returns the version directory.
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
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        if tflite is not None:
            from tfduch.export.tflite import write_tflite

            entries = write_tflite(module, tmp / "assets.extra" / "tflite", tflite)
            # Each TFLite file is the run's model too: it reports the run's model_id.
            metadata["tflite"] = {k: {**v, "model_id": metadata["model_id"]} for k, v in entries.items()}
        atomic_write_json(tmp / METADATA_FILE, metadata)

    path = write_version(model_dir, version, build)
    write_models_config(base_dir, serving_base_path)
    return path

