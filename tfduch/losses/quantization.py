"""Quantization loss: keep continuous (tanh) codes close to binary targets B.

B is shared by all views of an item (sign of the mean of the image and text views, refreshed once per
epoch by :class:`tfduch.training.callbacks.CodeTargetUpdate`), so it also pulls the modalities together.
"""

from __future__ import annotations

import tensorflow as tf


def quantization_loss(targets: tf.Tensor, codes: list[tf.Tensor]) -> tf.Tensor:
    """Σ_views ‖B − h_view‖², summed over the batch (the reference scale that β = 0.001 is tuned for)."""
    return tf.add_n([tf.reduce_sum(tf.square(targets - h)) for h in codes])


def binary_targets(image_views: list[tf.Tensor], text_views: list[tf.Tensor]) -> tf.Tensor:
    """B = sign(mean(mean image views, mean text views)), with sign(0) = +1 so B is always ±1."""
    img = tf.add_n(image_views) / float(len(image_views))
    txt = tf.add_n(text_views) / float(len(text_views))
    mean = (img + txt) / 2.0
    return tf.where(mean >= 0, tf.ones_like(mean), -tf.ones_like(mean))
