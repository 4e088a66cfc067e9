"""CHNR's noise detector: an MLP that scores how likely an image–caption pair is correctly matched.

Reference (``comrados/noisy_captions``): d → 1280 → 1280 → 1280 → 1 with ReLU and dropout 0.2, on the
concatenation [image features ‖ text features] of the frozen encoders (d = 1280 there).

:func:`pair_features` optionally rescales each modality to unit RMS per feature (L2-normalise, × √d)
before concatenating. Why: EfficientNet features have norm ≈ 17 and MiniLM features norm 1, so raw,
the image half dominates; and the detector is trained with a gradient penalty that keeps it about
1-Lipschitz *in its input*. A real and a fake pair differ only in the text half, by ≈ 1 for unit-norm
captions, so on raw features the two could never be more than ~1 logit apart and w would stay near
0.5 however well it ranks the pairs. At unit RMS they are ≈ 20 apart.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def build_noise_detector(input_dim: int, hidden_dim: int = 1280, layers: int = 3, dropout: float = 0.2,
                         name: str = "noise_detector") -> keras.Model:
    """``[B, input_dim]`` pair features → ``[B]`` logit of "this pair is clean" (``hidden_dim`` 0: input width)."""
    width = hidden_dim or input_dim
    inputs = keras.Input(shape=(input_dim,), name="pair")
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(width, activation="relu", name=f"hidden{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    outputs = keras.layers.Reshape((), name="score")(logit)
    return keras.Model(inputs, outputs, name=name)


def pair_features(image: tf.Tensor, text: tf.Tensor, normalize: bool = True) -> tf.Tensor:
    """The detector's input for aligned rows of image and text features: ``[image ‖ text]``, each at unit RMS."""
    if normalize:
        image = tf.math.l2_normalize(image, axis=-1) * math.sqrt(float(image.shape[-1]))
        text = tf.math.l2_normalize(text, axis=-1) * math.sqrt(float(text.shape[-1]))
    return tf.concat([image, text], axis=-1)
