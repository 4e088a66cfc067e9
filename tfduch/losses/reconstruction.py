"""Cross-autoencoding losses (CACH): each modality's code must reconstruct the *other* modality.

A code that can regenerate the paired caption's (or image's) encoder features has kept the semantics
both modalities share, which the contrastive and similarity terms alone may squeeze out when they
compress to K bits. Two terms:

* :func:`feature_reconstruction_loss` — decoded features vs. the other modality's frozen features,
  ``1 − cos`` so the (very different) scales of image and text features do not matter;
* :func:`code_consistency_loss` — the reconstruction, hashed again by the other modality's head,
  vs. the other modality's code: the "compare hash features" step, which checks that what was
  reconstructed is what that modality's hash function cares about.
"""

from __future__ import annotations

import tensorflow as tf


def feature_reconstruction_loss(reconstructed: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean ``1 − cos(reconstructed_i, target_i)`` over the batch (target treated as constant)."""
    r = tf.math.l2_normalize(reconstructed, axis=1)
    t = tf.math.l2_normalize(tf.stop_gradient(target), axis=1)
    return tf.reduce_mean(1.0 - tf.reduce_sum(r * t, axis=1))


def code_consistency_loss(rehashed: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
    """Mean squared difference per bit between re-hashed reconstructions and the reference codes."""
    return tf.reduce_mean(tf.square(rehashed - tf.stop_gradient(codes)))
