"""The serving graph: one ``tf.Module`` whose signatures turn captions / image bytes / features into codes.

Everything that turns an input into a code runs inside the graph, with the same ops the training
features went through, so a served code equals the in-memory model's code bit for bit:

- text: the MiniLM encoder (tensorflow-text tokenizer in the graph, its ``vocab.txt`` an asset) → text
  head → sign;
- image: ``tf.io.decode_image`` → resize to the feature cache's source size (256, antialiased bilinear,
  only when the image is not already 256×256, as :mod:`tfduch.features.encode` does) → the run's clean
  view preset (``none``: resize to the encoder size) → EfficientNet-Lite → image head → sign;
- features: head → sign, for users with a feature cache;
- ``metadata`` (no inputs): the export's metadata JSON as a scalar string, the one way a real
  ``tensorflow_model_server`` can hand it to a client (its GetModelMetadata returns signature defs only).

This module only builds the graph; :mod:`tfduch.export.savedmodel` writes it and
:mod:`tfduch.export.tflite` converts its image path. Signatures and the packing of ``packed`` are the
serving contract of ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfduch.codes import tf_pack, tf_sign
from tfduch.export.layout import ExportError
from tfduch.features.encode import SOURCE_SIZE

__all__ = [
    "SIGNATURES",
    "DEFAULT_SIGNATURE",
    "METADATA_SIGNATURE",
    "METADATA_OUTPUT",
    "DETERMINISTIC_VIEWS",
    "Encoders",
    "CodeExport",
    "binarize",
    "pack_codes",
    "decode_images",
]

DEFAULT_SIGNATURE = "encode_text"
# signature name -> (input name, input dtype)
SIGNATURES: dict[str, tuple[str, str]] = {
    "encode_text": ("text", "string"),
    "encode_image": ("image_bytes", "string"),
    "encode_image_features": ("features", "float32"),
    "encode_text_features": ("features", "float32"),
}
# The metadata signature: no inputs, one scalar string output holding the export's metadata JSON. The
# client (tfduch.serving.client) reads exactly this pair of names.
METADATA_SIGNATURE = "metadata"
METADATA_OUTPUT = "json"
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

    def attach_metadata(self, metadata_json: str) -> None:
        """Add the ``metadata`` signature: no inputs → ``json``, a scalar string holding ``metadata_json``.

        Why a signature: GetModelMetadata of the real TF Serving returns signature defs only, so a
        Predict on this signature is the one portable way for a client to read the model id.
        """
        text = str(metadata_json)

        def metadata() -> dict[str, tf.Tensor]:
            return {METADATA_OUTPUT: tf.constant(text, tf.string)}

        self.metadata = tf.function(metadata, input_signature=[])

    def signatures(self) -> dict[str, Any]:
        """Concrete functions keyed by signature name, ``serving_default`` = the text signature.

        ``metadata`` is included once :meth:`attach_metadata` was called.
        """
        out = {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
        out["serving_default"] = out[DEFAULT_SIGNATURE]
        if getattr(self, "metadata", None) is not None:
            out[METADATA_SIGNATURE] = self.metadata.get_concrete_function()
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
        out[METADATA_SIGNATURE] = {"inputs": {}, "outputs": {METADATA_OUTPUT: "string []"}}
        return out

    def preprocessing(self) -> dict[str, Any]:
        return {"decode": "tf.io.decode_image, channels=3 (JPEG, PNG, GIF first frame, BMP, WebP; not TIFF)",
                "source_size": SOURCE_SIZE,
                "source_resize": "bilinear, antialias, float (skipped when already source_size x source_size)",
                "clean_view": self.image_view, "image_size": self.image_size,
                "encoder_input": "float32 RGB 0..255 [B, S, S, 3]"}

    def edge_preprocessing(self) -> dict[str, Any]:
        """The image preprocessing as numbers, for runtimes without TensorFlow (:mod:`tfduch.edge`).

        Kept apart from :meth:`preprocessing` (which is part of the model id) so adding it changes no id.
        """
        crop = getattr(self.clean_view.layers[-1], "crop", None)
        return {"decode": "RGB (alpha dropped, grey expanded, first frame)", "source_size": SOURCE_SIZE,
                "resize": "bilinear, antialias (TF scale_and_translate, triangle kernel)",
                "center_crop": crop, "image_size": self.image_size, "clip": [0.0, 255.0],
                "input": f"float32 RGB 0..255 [1, {self.image_size}, {self.image_size}, 3]"}
