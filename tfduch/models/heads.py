"""The two small networks DUCH trains on top of frozen encoder features.

Both are Keras functional models so they can be inspected, saved and exported on their own.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def build_hash_head(input_dim: int, bits: int, hidden_dim: int = 4096, name: str = "hash_head") -> keras.Model:
    """Hashing head: d → hidden → BatchNorm → ReLU → K → tanh (continuous codes in (−1, 1)).

    Built under a strategy with several replicas, BatchNorm synchronises its batch statistics across them: each
    replica only sees its share of the batch, and single-worker training normalises over the global batch.
    """
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = keras.layers.Dense(hidden_dim, name="hidden")(inputs)
    synchronized = tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, synchronized=synchronized, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Dense(bits, name="project")(x)
    outputs = keras.layers.Activation("tanh", name="codes")(x)
    return keras.Model(inputs, outputs, name=name)


def build_discriminator(bits: int, name: str = "code_discriminator") -> keras.Model:
    """Code discriminator: K → 2K → BatchNorm → ReLU → 1 logit ("is this a text code?")."""
    inputs = keras.Input(shape=(bits,), name="codes")
    x = keras.layers.Dense(2 * bits, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(1, name="logit")(x)
    outputs = keras.layers.Reshape((), name="score")(outputs)
    return keras.Model(inputs, outputs, name=name)
