"""CACH's cross-autoencoding module: decoders from one modality's code to the other's features.

``image→text`` decodes an image code into MiniLM-space caption features, ``text→image`` a caption
code into EfficientNet-space image features. Both are small functional MLPs (K → hidden → BN → ReLU
→ D), used only during training: retrieval and export keep using the hashing heads alone.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def build_code_decoder(bits: int, output_dim: int, hidden_dim: int = 1024, name: str = "code_decoder"
                       ) -> keras.Model:
    """Decoder: K-bit continuous code → hidden → BatchNorm → ReLU → ``output_dim`` features."""
    inputs = keras.Input(shape=(bits,), name="codes")
    x = keras.layers.Dense(hidden_dim, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(output_dim, name="features")(x)
    return keras.Model(inputs, outputs, name=name)


class CrossAutoencoder(keras.layers.Layer):
    """The two cross-modal decoders; ``call`` maps ``{"image": h_I, "text": h_T}`` to reconstructions.

    The output under ``"text"`` is the caption features reconstructed from the image code, and under
    ``"image"`` the image features reconstructed from the caption code.
    """

    def __init__(self, bits: int, image_dim: int, text_dim: int, hidden_dim: int = 1024, **kwargs: Any):
        super().__init__(**kwargs)
        self.bits, self.image_dim, self.text_dim = int(bits), int(image_dim), int(text_dim)
        self.hidden_dim = int(hidden_dim)
        self.image_to_text = build_code_decoder(self.bits, self.text_dim, self.hidden_dim, name="image_to_text")
        self.text_to_image = build_code_decoder(self.bits, self.image_dim, self.hidden_dim, name="text_to_image")

    def build(self, input_shape: Any = None) -> None:
        self.built = True

    def call(self, codes: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        return {"text": self.image_to_text(codes["image"], training=training),
                "image": self.text_to_image(codes["text"], training=training)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bits": self.bits, "image_dim": self.image_dim, "text_dim": self.text_dim,
                "hidden_dim": self.hidden_dim}
