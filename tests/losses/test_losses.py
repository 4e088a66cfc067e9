"""Each loss term against a direct numpy computation of its formula."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfduch import losses


def _nt_xent_reference(a: np.ndarray, b: np.ndarray, tau: float, w: np.ndarray | None = None) -> float:
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(a)
    sim = z @ z.T / tau
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [sim[i, m] for m in range(2 * n) if m != i]
        lse = np.log(np.sum(np.exp(others)))
        weight = 1.0 if w is None else w[i % n]
        total += weight * (lse - sim[i, j])
    return total / (2 * n)


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_nt_xent_matches_formula(tau: float) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    got = float(losses.nt_xent(tf.constant(a, tf.float32), tf.constant(b, tf.float32), tau))
    assert got == pytest.approx(_nt_xent_reference(a, b, tau), rel=1e-4)
    w = rng.uniform(size=7)
    got_w = float(losses.nt_xent(tf.constant(a, tf.float32), tf.constant(b, tf.float32), tau,
                                 tf.constant(w, tf.float32)))
    assert got_w == pytest.approx(_nt_xent_reference(a, b, tau, w), rel=1e-4)


def test_nt_xent_sum_reduction_is_the_reference_sum_over_anchors() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    w = rng.uniform(size=6).astype(np.float32)
    for weights in (None, w):
        got = float(losses.nt_xent(a, b, 1.0, weights, reduction="sum"))
        assert got == pytest.approx(12 * _nt_xent_reference(a, b, 1.0, weights), rel=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        losses.nt_xent(a, b, reduction="max")


def test_nt_xent_prefers_aligned_pairs() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 16)).astype(np.float32)
    aligned = float(losses.nt_xent(a, a + 0.01, 0.5))
    shuffled = float(losses.nt_xent(a, np.roll(a, 1, axis=0), 0.5))
    assert aligned < shuffled


def test_quantization_and_targets() -> None:
    h = [tf.constant([[0.5, -0.2]]), tf.constant([[-0.1, 0.4]])]
    b = tf.constant([[1.0, -1.0]])
    assert float(losses.quantization_loss(b, h)) == pytest.approx(0.25 + 0.64 + 1.21 + 1.96)
    targets = losses.binary_targets([tf.constant([[0.2, -0.3, 0.0]])], [tf.constant([[-0.4, 0.1, 0.0]])])
    np.testing.assert_array_equal(targets.numpy(), [[-1.0, -1.0, 1.0]])  # sign(0) is +1


def test_bit_balance_modes_differ_as_documented() -> None:
    h = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], np.float32)
    # per bit: column sums (3, 1) → (9 + 1) / 3 items; per code: row sums (2, 0, 2) → 4 + 0 + 4
    assert float(losses.bit_balance_loss([tf.constant(h)], "per_bit")) == pytest.approx(10.0 / 3)
    assert float(losses.bit_balance_loss([tf.constant(h)], "per_code")) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="per_bit"):
        losses.bit_balance_loss([tf.constant(h)], "sideways")


def test_adversarial_terms() -> None:
    d_real, d_fake = tf.constant([2.0, 0.0]), tf.constant([-1.0, 0.5])
    expected = np.mean(np.log1p(np.exp(-np.array([2.0, 0.0])))) + np.mean(np.log1p(np.exp([-1.0, 0.5])))
    assert float(losses.discriminator_loss(d_real, d_fake)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.generator_loss([tf.constant([0.0, 0.0])])) == pytest.approx(2 * np.log(2.0), rel=1e-5)


def test_gradient_penalty_of_linear_critic() -> None:
    w = np.array([[3.0], [4.0]], np.float32)  # ‖∇D‖ = 5 everywhere → penalty (5 − 1)² = 16
    critic = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    critic.layers[0].kernel.assign(w)
    real, fake = tf.random.normal((4, 2)), tf.random.normal((4, 2))
    eps = tf.random.uniform((4, 2))
    gp = losses.gradient_penalty(lambda x, training=True: critic(x)[:, 0], real, fake, eps)
    assert float(gp) == pytest.approx(16.0, rel=1e-5)
