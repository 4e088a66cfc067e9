"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

DUCH uses it three times: between image and text codes of a pair (inter-modal) and between two
views of the same modality (intra-modal). Each of the 2N codes in a batch must pick out its partner
among the other 2N - 1 codes.
"""

from __future__ import annotations

import tensorflow as tf


def nt_xent(a: tf.Tensor, b: tf.Tensor, temperature: float = 1.0, weights: tf.Tensor | None = None,
            reduction: str = "mean") -> tf.Tensor:
    """NT-Xent between paired rows of ``a`` and ``b`` (both ``[N, K]``).

    ``weights`` (``[N]``, optional) scales each pair's two anchor terms; CHNR uses it to down-weight
    pairs its noise detector distrusts. ``reduction``: the (weighted) ``"mean"`` over the 2N anchors, or
    their ``"sum"`` (the reference implementations' form, against which α, β, γ were tuned).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown NT-Xent reduction {reduction!r}: use 'mean' or 'sum'")
    n = tf.shape(a)[0]
    z = tf.math.l2_normalize(tf.concat([a, b], axis=0), axis=1)
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits = logits - 1e9 * tf.eye(2 * n, dtype=logits.dtype)  # an anchor is not its own candidate
    positives = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
    per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits)
    if weights is not None:
        per_anchor = tf.cast(tf.concat([weights, weights], axis=0), per_anchor.dtype) * per_anchor
    total = tf.reduce_sum(per_anchor)
    return total if reduction == "sum" else total / tf.cast(2 * n, per_anchor.dtype)
