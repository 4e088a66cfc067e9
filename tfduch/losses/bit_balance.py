"""Bit balance: each bit should be +1 for about half the items, so every bit carries information.

The paper's term is per bit (column sums of the batch code matrix). The reference code summed each
*code* over its bits instead; ``mode="per_code"`` reproduces that.
"""

from __future__ import annotations

import tensorflow as tf


def bit_balance_loss(codes: list[tf.Tensor], mode: str = "per_bit") -> tf.Tensor:
    """Σ_views ‖h_viewᵀ 1‖² / N (per bit) or Σ_views ‖h_view 1‖² (per code, the reference's variant).

    The per-bit term is divided by the batch size N: un-normalised, its gradient on a code entry is
    2γ·Σ_i h_ik, which grows with the batch and, at the reference γ = 0.01, swamps the (batch-mean)
    contrastive gradient — on the synthetic test data it cut cross-modal mAP@20 from 1.0 to ~0.55.
    """
    if mode == "per_bit":
        return tf.add_n(
            [tf.reduce_sum(tf.square(tf.reduce_sum(h, axis=0))) / tf.cast(tf.shape(h)[0], h.dtype) for h in codes])
    if mode == "per_code":
        return tf.add_n([tf.reduce_sum(tf.square(tf.reduce_sum(h, axis=1))) for h in codes])
    raise ValueError(f"unknown bit balance mode {mode!r}: use 'per_bit' or 'per_code'")
