"""Adversarial modality alignment: a discriminator tells image codes from text codes.

The discriminator treats text codes as "real" and image codes as "fake"; the hashing network is
rewarded when the discriminator mistakes image codes for text codes, which pulls the two code
distributions together. The reference implementation applied the generator term to the text
branch (where it cannot align anything); ``generator_loss(..., branch="text")`` reproduces that.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

Discriminator = Callable[..., tf.Tensor]


def discriminator_loss(d_real: tf.Tensor, d_fake: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy on logits: real (text) → 1, fake (image) → 0. Mean over the batch."""
    return tf.reduce_mean(tf.nn.softplus(-d_real)) + tf.reduce_mean(tf.nn.softplus(d_fake))


def gradient_penalty(discriminator: Discriminator, real: tf.Tensor, fake: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    """WGAN-GP penalty (‖∇D(x̂)‖ − 1)² at x̂ = ε·real + (1 − ε)·fake, ε uniform per element."""
    mixed = eps * real + (1.0 - eps) * fake
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        score = discriminator(mixed, training=True)
    grads = tape.gradient(score, mixed)
    norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=1) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def generator_loss(d_scores: list[tf.Tensor]) -> tf.Tensor:
    """−log σ(D(h)) summed over the codes the hashing network wants judged "real" (text-like)."""
    return tf.add_n([tf.reduce_sum(tf.nn.softplus(-s)) for s in d_scores])
