"""CACH: its loss pieces, the cross-autoencoder, ablation switches and training on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import clustered_features

from tfduch.config import Config, load_config
from tfduch.errors import ConfigError
from tfduch.eval import map_at_k
from tfduch.losses.reconstruction import code_consistency_loss, feature_reconstruction_loss
from tfduch.losses.similarity import (
    cluster_similarity,
    code_similarity_loss,
    multiscale_similarity,
    neighbourhood_similarity,
    pairwise_similarity,
)
from tfduch.models.cach import CACH, CACHParams
from tfduch.models.cross_autoencoder import CrossAutoencoder
from tfduch.training.data import make_dataset
from tfduch.training.trainer import build_model, train


def cach_config(tmp_path, epochs: int = 2, **params) -> Config:
    cfg = Config(output_dir=str(tmp_path))
    cfg.model.method = "cach"
    cfg.model.bits = 16
    cfg.model.hidden_dim = 64
    cfg.model.params = {"decoder_hidden": 32, **params}
    cfg.train.epochs = epochs
    cfg.train.batch_size = 64
    cfg.train.lr = 1e-3
    cfg.train.tensorboard = False
    cfg.train.checkpoint = False
    cfg.train.verbose = "0"
    return cfg


# ------------------------------------------------------------------------------ similarity constraints
def _class_features(seed: int = 0, n: int = 40, classes: int = 4):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, 24))
    image = np.abs(centres[labels] + 0.3 * rng.normal(size=(n, 24)))  # non-negative, like CNN features
    text = centres[labels] @ rng.normal(size=(24, 16)) + 0.3 * rng.normal(size=(n, 16))
    return tf.constant(image, tf.float32), tf.constant(text, tf.float32), labels


def test_each_scale_is_symmetric_bounded_and_separates_classes() -> None:
    image, text, labels = _class_features()
    same = labels[:, None] == labels[None, :]
    s1 = pairwise_similarity(image, text).numpy()
    for s in (s1, neighbourhood_similarity(tf.constant(s1)).numpy(), cluster_similarity(tf.constant(s1), 5).numpy()):
        np.testing.assert_allclose(s, s.T, atol=1e-5)
        assert s.min() >= -1 - 1e-5 and s.max() <= 1 + 1e-5
        assert s[same].mean() > s[~same].mean() + 0.5
    cluster = cluster_similarity(tf.constant(s1), 5).numpy()
    assert set(np.unique(cluster)) <= {-1.0, 1.0} and np.all(np.diag(cluster) == 1.0)
    # every item is linked to at least its k nearest neighbours
    assert np.all((cluster > 0).sum(axis=1) >= 6)


def test_centring_spreads_non_negative_features() -> None:
    image, text, _ = _class_features()
    raw = tf.linalg.l2_normalize(image, 1) @ tf.transpose(tf.linalg.l2_normalize(image, 1))
    centred = pairwise_similarity(image, text, image_weight=1.0)
    assert float(tf.reduce_min(raw)) > 0.0  # all-positive cosines without centring
    assert float(tf.reduce_min(centred)) < -0.3


def test_multiscale_target_weights_and_errors() -> None:
    image, text, _ = _class_features()
    only_pairwise = multiscale_similarity(image, text, {"pairwise": 1.0, "cluster": 0.0})
    np.testing.assert_allclose(only_pairwise.numpy(), pairwise_similarity(image, text).numpy(), atol=1e-6)
    mixed = multiscale_similarity(image, text, {"pairwise": 1.0, "cluster": 1.0}, k=5)
    expected = (pairwise_similarity(image, text) + cluster_similarity(pairwise_similarity(image, text), 5)) / 2
    np.testing.assert_allclose(mixed.numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown similarity scales"):
        multiscale_similarity(image, text, {"global": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        multiscale_similarity(image, text, {"pairwise": 0.0})


def test_code_similarity_loss_is_zero_when_codes_reproduce_the_target() -> None:
    codes = tf.constant([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    target = tf.constant([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(code_similarity_loss(codes, codes, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(code_similarity_loss(codes, codes, -target)) > 1.0


# ------------------------------------------------------------------------------------ cross-autoencoder
def test_reconstruction_losses() -> None:
    x = tf.constant([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    assert float(feature_reconstruction_loss(3.0 * x, x)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(feature_reconstruction_loss(-x, x)) == pytest.approx(2.0, abs=1e-6)
    assert float(code_consistency_loss(x, x)) == 0.0
    assert float(code_consistency_loss(x + 1.0, x)) == pytest.approx(1.0)


def test_cross_autoencoder_maps_each_code_to_the_other_modality() -> None:
    cae = CrossAutoencoder(bits=8, image_dim=20, text_dim=12, hidden_dim=16)
    out = cae({"image": tf.zeros((3, 8)), "text": tf.zeros((3, 8))})
    assert out["text"].shape == (3, 12) and out["image"].shape == (3, 20)
    assert CrossAutoencoder(**{k: v for k, v in cae.get_config().items()
                               if k in ("bits", "image_dim", "text_dim", "hidden_dim")}).hidden_dim == 16


# ------------------------------------------------------------------------------------- model + training
def test_params_are_validated_with_named_errors(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    with pytest.raises(ConfigError, match="simlarity"):
        build_model(cach_config(tmp_path, simlarity=False), feats)
    with pytest.raises(ConfigError, match="unknown scales"):
        build_model(cach_config(tmp_path, scales={"global": 1.0}), feats)
    cfg = load_config(None, ["model.method=cach", "model.params.knn=3", "model.params.scales.cluster=0"])
    assert cfg.model.params == {"knn": 3, "scales": {"cluster": 0}}


def test_cach_learns_cross_modal_codes(tmp_path) -> None:
    feats, labels = clustered_features(n=240, classes=6, noise=1.0)
    cfg = cach_config(tmp_path, epochs=12)
    model = build_model(cfg, feats)
    assert isinstance(model, CACH)
    before = map_at_k(model.encode(feats.image, "image"), model.encode(feats.text, "text"), labels, labels, 20)
    model, summary = train(cfg, feats, tmp_path, model=model)
    history = summary["history"]
    assert all(np.isfinite(history[k]).all() for k in ("loss", "contrastive", "similarity", "reconstruction",
                                                        "consistency"))
    assert history["reconstruction"][-1] < history["reconstruction"][0]  # the decoders learn
    img, txt = model.encode(feats.image, "image"), model.encode(feats.text, "text")
    assert img.dtype == np.int8 and set(np.unique(img)) <= {-1, 1} and img.shape == (240, 16)
    i2t, t2i = map_at_k(img, txt, labels, labels, 20), map_at_k(txt, img, labels, labels, 20)
    chance = 1 / 6
    assert i2t > max(chance + 0.5, before + 0.2) and t2i > chance + 0.5, (before, i2t, t2i)


@pytest.mark.parametrize("switch", [{"similarity": False}, {"contrastive": False}, {"cross_autoencoder": False},
                                    {"consistency": False}, {"adversarial": True},
                                    {"scales": {"pairwise": 1.0, "neighbourhood": 0.0, "cluster": 0.0}}])
def test_every_ablation_switch_trains(tmp_path, switch) -> None:
    feats, _ = clustered_features(n=64)
    cfg = cach_config(tmp_path, epochs=1, **switch)
    cfg.loss.alpha = 0.01  # configs/cach.yaml's weight for the adversarial switch
    model, summary = train(cfg, feats, tmp_path)
    history = summary["history"]
    assert np.isfinite(history["loss"]).all()
    key = next(iter(switch))
    off = {"similarity": "similarity", "contrastive": "contrastive", "cross_autoencoder": "reconstruction",
           "consistency": "consistency"}.get(key)
    if off is not None:
        assert history[off] == [0.0]  # a switched-off term contributes nothing
    if switch == {"adversarial": True}:
        assert history["discriminator"][0] != 0.0


def test_switched_off_autoencoder_is_not_optimised(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    model = build_model(cach_config(tmp_path, cross_autoencoder=False), feats)
    decoder_vars = {id(v) for v in model.cross_autoencoder.trainable_variables}
    assert not decoder_vars & {id(v) for v in model.hashing_variables}
    on = build_model(cach_config(tmp_path), feats)
    assert {id(v) for v in on.cross_autoencoder.trainable_variables} <= {id(v) for v in on.hashing_variables}


def test_semantic_target_uses_both_captions(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    model = CACH(48, 32, 16, num_train=64, hidden_dim=32, params=CACHParams(decoder_hidden=16))
    batch = next(iter(make_dataset(feats, 64)))
    s = model.semantic_target(batch).numpy()
    assert s.shape == (64, 64)
    swapped = model.semantic_target({**batch, "text_aug": batch["text"]}).numpy()
    assert not np.allclose(s, swapped)
