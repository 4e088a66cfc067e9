"""Joint-modal similarity targets of DJSRH (Su et al., ICCV 2019) and JDSH (Liu et al., SIGIR 2020).

Both build a batch similarity matrix ``S`` from the frozen features of both modalities and train
the codes to reproduce it (:func:`tfduch.losses.similarity.code_similarity_loss`):

* DJSRH — joint-semantics matrix: ``S̃ = β·S_I + (1 − β)·S_T`` with ``S_X = 2·cos(X) − 1``, made
  neighbourhood-aware as ``S = μ·((1 − η)·S̃ + η·S̃S̃ᵀ / n)``.
* JDSH — joint distribution: ``S = a·S_I + b·S_T + λ·(Ŝ + Ŝᵀ)/2`` with the cross-modal second-order
  term ``Ŝ = norm(S_I)·norm(S_T)ᵀ``, then the distribution-based similarity decision and weighting
  (DSD&W) sharpens values in both tails, and ``S ← μ·S``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from tfduch.losses.similarity import cosine_matrix


def signed_cosine(x: tf.Tensor) -> tf.Tensor:
    """``2·cos(x_i, x_j) − 1``: the reference's rescaling of (mostly positive) feature cosines."""
    return 2.0 * cosine_matrix(x) - 1.0


def djsrh_similarity(image: tf.Tensor, text: tf.Tensor, beta: float = 0.6, eta: float = 0.4,
                     mu: float = 1.5) -> tf.Tensor:
    """DJSRH's joint-semantics affinity matrix ``[N, N]`` (no gradient)."""
    image, text = tf.stop_gradient(image), tf.stop_gradient(text)
    s = beta * signed_cosine(image) + (1.0 - beta) * signed_cosine(text)
    n = tf.cast(tf.shape(s)[0], s.dtype)
    return mu * ((1.0 - eta) * s + eta * tf.matmul(s, s, transpose_b=True) / n)


@dataclass(frozen=True)
class DistributionDecision:
    """Thresholds and gains of JDSH's DSD&W.

    Values below ``left = loc − alpha·scale_left`` are decided "dissimilar" and pushed down with the gain
    ``l1·exp(−(S − s_min))``, values above ``right = loc + beta·scale_right`` "similar" and pushed up with
    the gain ``l2·exp(S − s_max)``; values in between are kept.

    ``fit="batch"`` estimates ``loc`` (median), the two one-sided scales (root mean square distance
    of the values below / above it) and ``s_min``/``s_max`` from the batch's off-diagonal values — the
    reference's constants were fitted to its own features, which ours do not share. ``fit="fixed"``
    uses the constants given here (the reference's UCM values by default).

    The reference multiplies: ``S·(1 + gain)``. That pushes the right way only while the dissimilar
    tail is negative and the similar tail positive, as with its constants (``left`` = −0.63); with
    thresholds fitted to features whose similarities are mostly positive it would push a positive
    "dissimilar" value *up*. ``sign_aware=True`` moves by ``gain·|S|`` in the decided direction
    instead — identical to the reference wherever the reference's sign assumption holds;
    ``sign_aware=False`` is the reference formula.
    """

    alpha: float = 2.0
    beta: float = 4.0
    l1: float = 0.3
    l2: float = 0.3
    fit: str = "batch"
    loc: float = -0.47
    scale_left: float = 0.081
    scale_right: float = 0.100
    s_min: float = -0.64
    s_max: float = 0.75
    sign_aware: bool = True


def _batch_statistics(s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    n = tf.shape(s)[0]
    values = tf.boolean_mask(s, ~tf.eye(n, dtype=tf.bool))
    values = tf.sort(values)
    m = tf.shape(values)[0]
    loc = values[m // 2]
    below, above = values[: m // 2 + 1] - loc, values[m // 2:] - loc
    scale_left = tf.sqrt(tf.reduce_mean(tf.square(below)) + 1e-12)
    scale_right = tf.sqrt(tf.reduce_mean(tf.square(above)) + 1e-12)
    return loc, scale_left, scale_right, values[0], values[-1]


def distribution_weighting(s: tf.Tensor, decision: DistributionDecision) -> tf.Tensor:
    """JDSH's DSD&W: sharpen both tails of the similarity distribution (see :class:`DistributionDecision`)."""
    d = decision
    if d.fit == "batch":
        loc, sl, sr, s_min, s_max = _batch_statistics(s)
    elif d.fit == "fixed":
        loc, sl, sr, s_min, s_max = d.loc, d.scale_left, d.scale_right, d.s_min, d.s_max
    else:
        raise ValueError(f"DistributionDecision.fit must be 'batch' or 'fixed', got {d.fit!r}")
    left, right = loc - d.alpha * sl, loc + d.beta * sr
    gain_low, gain_high = d.l1 * tf.exp(-(s - s_min)), d.l2 * tf.exp(s - s_max)
    if d.sign_aware:
        low, high = s - gain_low * tf.abs(s), s + gain_high * tf.abs(s)
    else:
        low, high = s * (1.0 + gain_low), s * (1.0 + gain_high)
    return tf.where(s < left, low, tf.where(s > right, high, s))


def jdsh_similarity(image: tf.Tensor, text: tf.Tensor, a: float = 0.4, b: float = 0.3, lamb: float = 0.3,
                    mu: float = 1.5, decision: DistributionDecision | None = DistributionDecision()) -> tf.Tensor:
    """JDSH's joint-distribution similarity matrix ``[N, N]`` with DSD&W (``decision=None``: without)."""
    image, text = tf.stop_gradient(image), tf.stop_gradient(text)
    s_i, s_t = signed_cosine(image), signed_cosine(text)
    high = cosine_matrix(s_i, s_t)
    s = a * s_i + b * s_t + lamb * (high + tf.transpose(high)) / 2.0
    if decision is not None:
        s = distribution_weighting(s, decision)
    return mu * s
