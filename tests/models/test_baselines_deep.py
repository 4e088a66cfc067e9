"""DJSRH and JDSH: their similarity targets against numpy formulas, and training on synthetic features."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import clustered_features

from tfduch.config import Config
from tfduch.errors import ConfigError
from tfduch.eval import map_at_k
from tfduch.losses.joint_semantics import (
    DistributionDecision,
    distribution_weighting,
    djsrh_similarity,
    jdsh_similarity,
)
from tfduch.models.djsrh import DJSRH, head_logits
from tfduch.models.jdsh import JDSH, JDSHParams
from tfduch.training.trainer import build_model, train


def deep_config(tmp_path, method: str, epochs: int = 2, **params) -> Config:
    cfg = Config(output_dir=str(tmp_path))
    cfg.model.method = method
    cfg.model.bits = 16
    cfg.model.hidden_dim = 64
    cfg.model.params = dict(params)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 32
    cfg.train.lr = 0.01
    cfg.train.lr_decay_every = 0
    cfg.train.tensorboard = False
    cfg.train.checkpoint = False
    cfg.train.verbose = "0"
    return cfg


def _cos(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.random((12, 10)).astype(np.float32), rng.normal(size=(12, 6)).astype(np.float32)


def test_djsrh_similarity_matches_the_formula(features) -> None:
    img, txt = features
    s = 0.6 * (2 * _cos(img) - 1) + 0.4 * (2 * _cos(txt) - 1)
    expected = 1.5 * (0.6 * s + 0.4 * s @ s.T / len(img))
    np.testing.assert_allclose(djsrh_similarity(tf.constant(img), tf.constant(txt)).numpy(), expected, atol=1e-5)


def test_jdsh_similarity_matches_the_formula_without_weighting(features) -> None:
    img, txt = features
    s_i, s_t = 2 * _cos(img) - 1, 2 * _cos(txt) - 1
    n_i = s_i / np.linalg.norm(s_i, axis=1, keepdims=True)
    n_t = s_t / np.linalg.norm(s_t, axis=1, keepdims=True)
    high = n_i @ n_t.T
    expected = 1.5 * (0.4 * s_i + 0.3 * s_t + 0.3 * (high + high.T) / 2)
    got = jdsh_similarity(tf.constant(img), tf.constant(txt), decision=None).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_distribution_weighting_reference_formula() -> None:
    s = np.linspace(-0.9, 0.9, 19, dtype=np.float32)
    d = DistributionDecision(fit="fixed", sign_aware=False)
    got = distribution_weighting(tf.constant(s), d).numpy()
    left, right = d.loc - d.alpha * d.scale_left, d.loc + d.beta * d.scale_right
    low, high, mid = s < left, s > right, (s >= left) & (s <= right)
    np.testing.assert_allclose(got[mid], s[mid])
    np.testing.assert_allclose(got[low], (1 + d.l1 * np.exp(-(s[low] - d.s_min))) * s[low], rtol=1e-5)
    np.testing.assert_allclose(got[high], (1 + d.l2 * np.exp(s[high] - d.s_max)) * s[high], rtol=1e-5)
    # the sign-aware variant agrees wherever the reference's sign assumption holds (negative low tail,
    # positive high tail) and otherwise moves the decided way instead of the opposite one
    aware = distribution_weighting(tf.constant(s), DistributionDecision(fit="fixed")).numpy()
    np.testing.assert_allclose(aware[low], got[low], rtol=1e-5)
    np.testing.assert_allclose(aware[high & (s > 0)], got[high & (s > 0)], rtol=1e-5)
    wrong_way = high & (s < 0)
    assert np.all(got[wrong_way] < s[wrong_way]) and np.all(aware[wrong_way] > s[wrong_way])


def test_batch_fitted_decision_adapts_to_the_distribution() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(0.3, 0.1, size=(30, 30)).astype(np.float32)
    s = (s + s.T) / 2
    fixed = distribution_weighting(tf.constant(s), DistributionDecision(fit="fixed")).numpy()
    fitted = distribution_weighting(tf.constant(s), DistributionDecision(fit="batch", alpha=1.0, beta=1.0)).numpy()
    # the reference's constants (fitted to other features) treat this whole distribution as "similar";
    # fitted thresholds leave its centre alone, push its lower tail down and its upper tail up
    assert np.mean(fixed > s) > 0.9
    centre = np.abs(s - np.median(s)) < 0.02
    np.testing.assert_allclose(fitted[centre], s[centre])
    low, high = s < np.quantile(s, 0.02), s > np.quantile(s, 0.98)
    assert np.all(fitted[low] < s[low]) and np.all(fitted[high] > s[high])
    with pytest.raises(ValueError, match="fit"):
        distribution_weighting(tf.constant(s), DistributionDecision(fit="other"))


@pytest.mark.parametrize("method", ["djsrh", "jdsh"])
def test_method_learns_cross_modal_codes(tmp_path, method) -> None:
    feats, labels = clustered_features(n=192, classes=6, noise=1.0)
    cfg = deep_config(tmp_path, method, epochs=8)
    model = build_model(cfg, feats)
    assert isinstance(model, {"djsrh": DJSRH, "jdsh": JDSH}[method])
    assert isinstance(model.optimizer, keras.optimizers.SGD)  # the reference optimizer, not the trainer's Adam
    model, summary = train(cfg, feats, tmp_path, model=model)
    assert np.isfinite(summary["history"]["loss"]).all()
    assert summary["history"]["loss"][-1] < summary["history"]["loss"][0]
    img, txt = model.encode(feats.image, "image"), model.encode(feats.text, "text")
    assert img.dtype == np.int8 and set(np.unique(img)) <= {-1, 1} and img.shape == (192, 16)
    i2t, t2i = map_at_k(img, txt, labels, labels, 20), map_at_k(txt, img, labels, labels, 20)
    assert i2t > 1 / 6 + 0.5 and t2i > 1 / 6 + 0.5, (i2t, t2i)


def test_code_scale_grows_with_epochs(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    cfg = deep_config(tmp_path, "djsrh", epochs=3)
    model = build_model(cfg, feats)
    assert model.params.steps_per_epoch == 2  # 64 items, batch 32
    assert float(model.code_scale()) == pytest.approx(1.0)
    train(cfg, feats, tmp_path, model=model)
    assert int(model.optimizer.iterations) == 6
    assert float(model.code_scale()) == pytest.approx(np.sqrt(4.0))
    off = build_model(deep_config(tmp_path, "djsrh", tanh_scaling=False), feats)
    assert float(off.code_scale()) == 1.0


def test_head_logits_are_the_pre_tanh_codes(tmp_path) -> None:
    feats, _ = clustered_features(n=16)
    model = build_model(deep_config(tmp_path, "djsrh"), feats)
    x = tf.constant(feats.image)
    np.testing.assert_allclose(np.tanh(head_logits(model.image_head, x, training=False).numpy()),
                               model.image_head(x, training=False).numpy(), atol=1e-5)


def test_params_errors_name_the_key(tmp_path) -> None:
    feats, _ = clustered_features(n=32)
    with pytest.raises(ConfigError, match="lambda_txt"):
        build_model(deep_config(tmp_path, "djsrh", lambda_txt=1.0), feats)
    with pytest.raises(ConfigError, match="optimizer"):
        build_model(deep_config(tmp_path, "jdsh", optimizer="rmsprop"), feats)
    params = JDSHParams(decision={"fit": "fixed"})
    assert isinstance(params.decision, DistributionDecision) and params.decision.fit == "fixed"
    assert JDSHParams(decision=None).decision is None


def test_adam_option_keeps_the_trainers_optimizer(tmp_path) -> None:
    feats, _ = clustered_features(n=32)
    model = build_model(deep_config(tmp_path, "jdsh", optimizer="adam"), feats)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
