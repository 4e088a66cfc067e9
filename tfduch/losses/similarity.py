"""Multiscale semantic similarity constraints (CACH), and the code-similarity loss DJSRH/JDSH share.

Unsupervised hashing has no labels, but the frozen encoders already know which items look or read
alike. A *target* similarity matrix ``S`` over the batch is built from their features, and the codes
are asked to reproduce it: ``cos(h_a, h_b) ≈ S`` for image–image and text–text pairs (intra-modal)
and image–text pairs (inter-modal). Unlike the contrastive loss, which treats every other item in
the batch as a negative (also items of the same scene class), ``S`` tells the codes which of those
"negatives" are in fact neighbours.

CACH's ``S`` mixes three scales of semantic similarity (see ``docs/cach.md``):

* ``pairwise`` — first order: cosine of batch-centred features, a weighted mean of the image and
  the text view of each pair. Centring spreads the (all-positive) CNN-feature cosines over [−1, 1].
* ``neighbourhood`` — second order: cosine between two items' rows of the pairwise matrix, i.e.
  "do they have the same neighbours?", robust to one noisy pairwise value.
* ``cluster`` — symmetric k-nearest-neighbour graph of the pairwise matrix, in {−1, +1}: a hard,
  class-like decision of who belongs together.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

SCALES = ("pairwise", "neighbourhood", "cluster")


def cosine_matrix(a: tf.Tensor, b: tf.Tensor | None = None) -> tf.Tensor:
    """``[N, M]`` cosine similarities between the rows of ``a`` and of ``b`` (default: ``a``)."""
    a = tf.math.l2_normalize(a, axis=1)
    b = a if b is None else tf.math.l2_normalize(b, axis=1)
    return tf.matmul(a, b, transpose_b=True)


def centered_cosine(x: tf.Tensor) -> tf.Tensor:
    """Cosine similarities after subtracting the batch mean, so unrelated items land near 0."""
    return cosine_matrix(x - tf.reduce_mean(x, axis=0, keepdims=True))


def pairwise_similarity(image: tf.Tensor, text: tf.Tensor, image_weight: float = 0.5) -> tf.Tensor:
    """First-order scale: ``w·cos(image) + (1 − w)·cos(text)`` on centred features, in [−1, 1]."""
    return image_weight * centered_cosine(image) + (1.0 - image_weight) * centered_cosine(text)


def neighbourhood_similarity(s: tf.Tensor) -> tf.Tensor:
    """Second-order scale: cosine between rows of ``s`` (items sharing neighbours are similar)."""
    return cosine_matrix(s)


def cluster_similarity(s: tf.Tensor, k: int) -> tf.Tensor:
    """Cluster scale: +1 where j is among i's ``k`` nearest neighbours or i among j's, else −1.

    The item itself is always included (diagonal +1). ``k`` is clipped to the batch size.
    """
    n = tf.shape(s)[0]
    k = tf.minimum(tf.constant(int(k) + 1, tf.int32), n)  # + 1: every item is its own nearest neighbour
    kth = tf.math.top_k(s, k=k).values[:, -1:]
    knn = tf.cast(s >= kth, s.dtype)
    linked = tf.maximum(knn, tf.transpose(knn))
    linked = tf.maximum(linked, tf.eye(n, dtype=s.dtype))
    return 2.0 * linked - 1.0


def multiscale_similarity(image: tf.Tensor, text: tf.Tensor, weights: Mapping[str, float],
                          image_weight: float = 0.5, k: int = 10) -> tf.Tensor:
    """Target ``S``: the ``weights``-weighted mean of the chosen scales (see the module docstring).

    Scales with weight 0 are not computed. Gradients never flow into the target.
    """
    unknown = set(weights) - set(SCALES)
    if unknown:
        raise ValueError(f"unknown similarity scales {sorted(unknown)}; choose from {SCALES}")
    active = {name: float(w) for name, w in weights.items() if w}
    if not active:
        raise ValueError("multiscale_similarity needs at least one scale with a non-zero weight")
    image, text = tf.stop_gradient(image), tf.stop_gradient(text)
    s1 = pairwise_similarity(image, text, image_weight)
    parts = {"pairwise": lambda: s1, "neighbourhood": lambda: neighbourhood_similarity(s1),
             "cluster": lambda: cluster_similarity(s1, k)}
    total = tf.add_n([w * parts[name]() for name, w in active.items()])
    return total / sum(active.values())


def code_similarity_loss(a: tf.Tensor, b: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared error between the codes' cosine matrix ``cos(a_i, b_j)`` and ``target``."""
    return tf.reduce_mean(tf.square(cosine_matrix(a, b) - tf.stop_gradient(target)))
