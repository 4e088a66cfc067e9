"""CHNR on small synthetic features with planted caption noise: detector, weighting schemes, phases, resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import clustered_features

from tfduch.config import Config
from tfduch.data.noise import make_caption_noise, select_clean_subset
from tfduch.eval import map_at_k
from tfduch.models.chnr import WEIGHTINGS, fake_partners
from tfduch.reports.noise import roc_auc
from tfduch.training.data import TrainingFeatures
from tfduch.training.phases import PhaseSwitch
from tfduch.training.trainer import build_model, train


def noisy_features(n: int = 240, classes: int = 4, p: float = 0.7, seed: int = 1):
    """Clean features, their labels, the noise, and the features a noisy archive would give (with clean subset)."""
    feats, labels = clustered_features(n=n, classes=classes, seed=seed)
    noise = select_clean_subset(make_caption_noise(labels, p, seed=0), 0.3)
    noisy = TrainingFeatures(feats.image, feats.image_aug, noise.take(feats.captions),
                             noise.take(feats.caption_counts), noise.take(feats.caption_choice),
                             clean_mask=noise.clean, labels=np.where(noise.clean, labels, -1))
    return feats, labels, noise, noisy


def small_config(tmp_path, method: str = "chnr", epochs: int = 4, weighting: str = "w3", switch: int = 2,
                 hidden: int = 64) -> Config:
    cfg = Config(output_dir=str(tmp_path))
    cfg.model.method, cfg.model.bits, cfg.model.hidden_dim = method, 16, hidden
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = epochs, 64, 1e-3
    cfg.train.tensorboard, cfg.train.checkpoint, cfg.train.verbose = False, False, "0"
    c = cfg.noise.chnr
    c.weighting, c.switch_epoch, c.detector_hidden_dim, c.detector_lr = weighting, switch, 64, 1e-3
    return cfg


def test_weighting_schemes() -> None:
    w, t = tf.constant([0.1, 0.5, 0.9]), tf.constant(0.4)
    np.testing.assert_allclose(WEIGHTINGS["w"](w, t), [0.1, 0.5, 0.9])
    np.testing.assert_allclose(WEIGHTINGS["w3"](w, t), [0.001, 0.125, 0.729], rtol=1e-5)
    np.testing.assert_allclose(WEIGHTINGS["threshold"](w, t), [0.0, 1.0, 1.0])
    np.testing.assert_allclose(WEIGHTINGS["none"](w, t), [1.0, 1.0, 1.0])


def test_fake_partners_come_from_another_class() -> None:
    seed = keras.random.SeedGenerator(0)
    labels = tf.constant([0, 0, 1, 2, 2, 2, 1, 0])
    seen = set()
    for _ in range(20):
        partner, usable = fake_partners(labels, seed)
        partner = partner.numpy()
        assert usable.numpy().all()
        assert np.all(labels.numpy()[partner] != labels.numpy())
        seen.update(zip(range(8), partner, strict=True))
    assert len(seen) > 16  # partners are drawn at random, not fixed
    _, usable = fake_partners(tf.constant([3, 3, 3]), seed)
    assert not usable.numpy().any()


def test_phase_switch_drives_the_model(tmp_path) -> None:
    _, _, _, noisy = noisy_features(n=64)
    model = build_model(small_config(tmp_path), noisy)
    switch = PhaseSwitch(3)
    switch.set_model(model)
    assert [switch.phase_at(e) for e in range(5)] == [1, 1, 1, 2, 2]
    switch.on_epoch_begin(0)
    assert int(model.phase.numpy()) == 1 and np.all(model.score_sums.numpy() == 0)
    model.score_sums.assign([8.0, 10.0, 3.0, 10.0])  # mean real 0.8, mean fake 0.3
    switch.on_epoch_begin(3)
    assert int(model.phase.numpy()) == 2 and model.threshold.numpy() == pytest.approx(0.55)
    with pytest.raises(ValueError, match="phases 1 and 2"):
        model.set_phase(3)


def test_quantization_is_weighted_like_the_pair(tmp_path) -> None:
    from tfduch.losses import quantization_loss

    _, _, _, noisy = noisy_features(n=64)
    model = build_model(small_config(tmp_path), noisy)
    rng = np.random.default_rng(0)
    codes = {v: tf.constant(np.tanh(rng.normal(size=(8, 16))), tf.float32)
             for v in ("image", "image_aug", "text", "text_aug")}
    index = tf.range(8)
    full = quantization_loss(model.code_targets.lookup(index), list(codes.values()))
    weights = tf.constant([1, 1, 0, 0, 0.5, 0.5, 1, 0], tf.float32)
    per_item = [float(quantization_loss(model.code_targets.lookup(index[i : i + 1]),
                                        [h[i : i + 1] for h in codes.values()])) for i in range(8)]
    assert float(model.weighted_quantization(codes, index, tf.ones(8))) == pytest.approx(float(full), rel=1e-5)
    assert float(model.weighted_quantization(codes, index, weights)) == pytest.approx(
        float(np.dot(weights.numpy(), per_item)), rel=1e-5)


def test_batches_without_clean_subset_fail_clearly(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="clean_mask and labels"):
        train(cfg, feats, tmp_path)


def test_detector_is_frozen_in_phase_2_and_resume_keeps_phase_state(tmp_path) -> None:
    _, _, _, noisy = noisy_features(n=128)
    cfg = small_config(tmp_path, epochs=2, switch=2)
    cfg.train.checkpoint = True
    model, summary = train(cfg, noisy, tmp_path)
    assert summary["history"]["phase"] == [1, 1]
    assert summary["history"]["detector"][-1] > 0
    sums = model.score_sums.numpy()
    expected = 0.5 * (sums[0] / sums[1] + sums[2] / sums[3])
    detector = [v.numpy().copy() for v in model.detector.weights]
    steps = int(model.detector_optimizer.iterations.numpy())
    assert steps == 2 * 2  # one detector update per phase-1 step

    cfg.train.epochs = 4
    resumed, summary = train(cfg, noisy, tmp_path, model=build_model(cfg, noisy))
    assert summary["initial_epoch"] == 2 and summary["history"]["phase"] == [2, 2]
    assert resumed.threshold.numpy() == pytest.approx(expected)  # from the restored phase-1 scores
    assert int(resumed.detector_optimizer.iterations.numpy()) == steps  # optimizer state came back, then froze
    for a, b in zip(detector, resumed.detector.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    assert summary["history"]["detector"] == [0.0, 0.0]

    # saved weights carry the phase state too (what tfduch evaluate / export load)
    resumed.save_weights(tmp_path / "m.weights.h5")
    fresh = build_model(cfg, noisy)
    fresh.load_weights(tmp_path / "m.weights.h5")
    assert int(fresh.phase.numpy()) == 2 and fresh.threshold.numpy() == pytest.approx(expected)


def test_duch_objective_trains_the_code_discriminator(tmp_path) -> None:
    _, _, _, noisy = noisy_features(n=96)
    cfg = small_config(tmp_path, epochs=2, switch=1)
    cfg.noise.chnr.objective = "duch"
    cfg.loss.alpha = 0.01  # the paper objective's adversarial weight (configs/chnr_duch.yaml)
    model, summary = train(cfg, noisy, tmp_path)
    h = summary["history"]
    assert all(x > 0 for x in h["discriminator"]) and all(x > 0 for x in h["bit_balance"])
    assert h["detector"][0] > 0 and h["detector"][1] == 0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """DUCH, CHNR without weights and CHNR with w³ trained on the same planted noise (p = 0.7, 4 classes)."""
    tmp = tmp_path_factory.mktemp("chnr")
    feats, labels, noise, noisy = noisy_features()
    runs = {}
    for name, method, weighting in (("duch", "duch", "none"), ("none", "chnr", "none"), ("w3", "chnr", "w3")):
        cfg = small_config(tmp / name, method=method, epochs=30, weighting=weighting, switch=15, hidden=512)
        model, _ = train(cfg, noisy, tmp / name)
        img, txt = model.encode(feats.image, "image"), model.encode(feats.text, "text")
        runs[name] = {"model": model, "i2t": map_at_k(img, txt, labels, labels, 20),
                      "t2i": map_at_k(txt, img, labels, labels, 20)}
    return feats, noise, noisy, runs


def test_detector_separates_planted_noise(planted) -> None:
    _, noise, noisy, runs = planted
    w = runs["w3"]["model"].score_pairs(noisy.image, noisy.text)
    outside = ~noise.clean  # pairs the detector never saw as real or fake
    auc = roc_auc(w[outside], ~noise.corrupted[outside])
    assert auc > 0.9, auc
    assert w[~noise.corrupted].mean() > w[noise.corrupted].mean() + 0.3


def test_weighted_training_beats_unweighted(planted) -> None:
    *_, runs = planted
    score = {name: (r["i2t"] + r["t2i"]) / 2 for name, r in runs.items()}
    assert score["w3"] > score["none"] + 0.03, score
    assert score["w3"] > score["duch"] + 0.03, score
