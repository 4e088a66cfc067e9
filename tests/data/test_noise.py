"""Injected caption noise, the clean subset, their JSON file, the pipeline wiring and the detector report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import clustered_features

from tfduch.config import load_config
from tfduch.data.noise import (
    load_caption_noise,
    load_or_make_caption_noise,
    make_caption_noise,
    save_caption_noise,
    select_clean_subset,
)
from tfduch.errors import ConfigError, DataError
from tfduch.reports.noise import detector_quality, plot_weight_histograms, roc_auc


def labels_of(n: int = 2000, classes: int = 21, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def test_noise_rate_protection_and_donor_classes() -> None:
    labels = labels_of()
    noise = make_caption_noise(labels, p=0.5, seed=3, protected_fraction=0.2)
    assert noise.protected.sum() == 400
    assert not np.any(noise.corrupted & noise.protected)
    # expected share corrupted: p * (1 - protected) = 0.4; binomial sd over 1600 draws ≈ 0.0125 of N
    assert abs(noise.corrupted.mean() - 0.4) < 0.04
    donors = noise.donor[noise.corrupted]
    assert np.all(labels[donors] != labels[noise.corrupted])
    assert np.array_equal(noise.donor[~noise.corrupted], np.flatnonzero(~noise.corrupted))
    # donors spread over the other classes instead of always the same image
    assert len(np.unique(donors)) > 0.5 * len(donors)


def test_noise_is_seeded_and_nested_across_p() -> None:
    labels = labels_of(500)
    a, b = make_caption_noise(labels, 0.3, seed=1), make_caption_noise(labels, 0.3, seed=1)
    assert np.array_equal(a.donor, b.donor) and np.array_equal(a.protected, b.protected)
    assert not np.array_equal(a.donor, make_caption_noise(labels, 0.3, seed=2).donor)
    low, high = make_caption_noise(labels, 0.1, seed=1), make_caption_noise(labels, 0.5, seed=1)
    assert np.all(high.corrupted[low.corrupted])  # lower noise is a subset of higher noise ...
    assert np.array_equal(low.donor[low.corrupted], high.donor[low.corrupted])  # ... with the same donors
    assert np.array_equal(low.protected, high.protected)
    assert not make_caption_noise(labels, 0.0, seed=1).corrupted.any()


def test_noise_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="two classes"):
        make_caption_noise(np.zeros(10, int), 0.5)
    with pytest.raises(DataError, match="must both be in"):
        make_caption_noise(labels_of(10), 1.0)
    with pytest.raises(DataError, match="single-label"):
        make_caption_noise(np.zeros((10, 3), int), 0.5)


def test_take_permutes_rows_by_donor() -> None:
    labels = labels_of(50, classes=3)
    noise = make_caption_noise(labels, 0.6, seed=0)
    rows = np.arange(50)[:, None] * np.ones((1, 4))
    taken = noise.take(rows)
    assert np.array_equal(taken[:, 0], noise.donor)
    with pytest.raises(DataError, match="50 items"):
        noise.take(rows[:10])


def test_clean_subset_is_uncorrupted_sized_and_prefers_protected() -> None:
    noise = make_caption_noise(labels_of(1000), 0.5, seed=0, protected_fraction=0.2)
    clean = select_clean_subset(noise, 0.3, seed=0).clean
    assert clean.sum() == 300 and not np.any(clean & noise.corrupted)
    assert np.all(clean[noise.protected])  # all 200 protected pairs come first
    small = select_clean_subset(noise, 0.1, seed=0).clean
    assert small.sum() == 100 and np.all(noise.protected[small])
    assert not np.array_equal(small, select_clean_subset(noise, 0.1, seed=1).clean)
    with pytest.raises(DataError, match="larger than the"):
        select_clean_subset(noise, 0.9)


def test_noise_file_round_trip_and_checks(tmp_path) -> None:
    labels = labels_of(120, classes=5)
    train = np.arange(1000, 1120)[::-1].copy()  # dataset indices of the training items
    kw = dict(p=0.4, seed=7, protected_fraction=0.2, clean_fraction=0.3)
    path = tmp_path / "noise.json"
    made = load_or_make_caption_noise(path, labels, train, "digest-a", **kw)
    raw = json.loads(path.read_text())
    assert sorted(raw["corrupted_indices"]) == sorted(train[made.corrupted].tolist())
    loaded = load_caption_noise(path, train, "digest-a")
    assert np.array_equal(loaded.donor, made.donor) and np.array_equal(loaded.clean, made.clean)
    assert np.array_equal(loaded.protected, made.protected)
    again = load_or_make_caption_noise(path, labels, train, "digest-a", **kw)  # reused, not redrawn
    assert np.array_equal(again.donor, made.donor)
    with pytest.raises(DataError, match="other settings.*p: file 0.4, config 0.5"):
        load_or_make_caption_noise(path, labels, train, "digest-a", **{**kw, "p": 0.5})
    with pytest.raises(DataError, match="another protocol split"):
        load_caption_noise(path, train, "digest-b")
    with pytest.raises(DataError, match="another protocol split"):
        load_caption_noise(path, train[:-1], None)
    save_caption_noise(tmp_path / "bare.json", make_caption_noise(labels, 0.4, seed=7), train, "digest-a")
    assert load_caption_noise(tmp_path / "bare.json", train).clean is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a caption-noise file"):
        load_caption_noise(tmp_path / "bad.json", train)


def test_training_features_carry_noise_clean_mask_and_labels() -> None:
    from tfduch.pipeline import training_features
    from tfduch.training.data import make_dataset

    feats, labels = clustered_features(n=60, classes=4, captions=3)
    fs = SimpleNamespace(image=feats.image, image_aug=feats.image_aug, captions=feats.captions,
                         caption_counts=feats.caption_counts, captions_aug=None)
    split = SimpleNamespace(train=np.arange(60), caption_choice=feats.caption_choice)
    prepared = SimpleNamespace(features=fs, split=split, dataset=SimpleNamespace(labels=labels))
    noise = select_clean_subset(make_caption_noise(labels, 0.5, seed=0), 0.3)
    plain = training_features(prepared)
    assert plain.clean_mask is None and np.array_equal(plain.captions, feats.captions)
    noisy = training_features(prepared, noise)
    bad = noise.corrupted
    assert bad.any()
    np.testing.assert_array_equal(noisy.text[bad], feats.text[noise.donor[bad]])
    np.testing.assert_array_equal(noisy.text[~bad], feats.text[~bad])
    np.testing.assert_array_equal(noisy.image, feats.image)  # images are never touched
    assert np.array_equal(noisy.clean_mask, noise.clean)
    assert np.array_equal(noisy.labels, np.where(noise.clean, labels, -1))
    batch = next(iter(make_dataset(noisy, batch_size=16)))
    idx = batch["index"].numpy()
    assert np.array_equal(batch["clean"].numpy(), noise.clean[idx])
    assert np.array_equal(batch["label"].numpy(), noisy.labels[idx])


def test_noise_config_is_validated() -> None:
    cfg = load_config(None, ["noise.p=0.5", "noise.chnr.weighting=threshold", "noise.chnr.switch_epoch=3"])
    assert cfg.noise.p == 0.5 and cfg.noise.chnr.weighting == "threshold" and cfg.noise.chnr.switch_epoch == 3
    with pytest.raises(ConfigError, match="noise.p must be in"):
        load_config(None, ["noise.p=1.5"])
    with pytest.raises(ConfigError, match="noise.chnr.weighting must be"):
        load_config(None, ["noise.chnr.weighting=w2"])


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # rounding makes ties
    positive = rng.random(200) < 0.4
    pos, neg = scores[positive], scores[~positive]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert roc_auc(scores, positive) == pytest.approx(brute)
    assert roc_auc(positive.astype(float), positive) == 1.0
    assert roc_auc(-positive.astype(float), positive) == 0.0
    assert np.isnan(roc_auc(scores, np.ones(200, bool)))


def test_detector_quality_and_histogram_png() -> None:
    labels = labels_of(300, classes=6)
    noise = select_clean_subset(make_caption_noise(labels, 0.5, seed=0), 0.2)
    w = np.where(noise.corrupted, 0.2, 0.8) + np.random.default_rng(0).normal(0, 0.05, 300)
    q = detector_quality(w, noise, applied=w**3, threshold=0.5)
    assert q["roc_auc"] == 1.0 and q["roc_auc_outside_clean_subset"] == 1.0
    assert q["mean_w_clean"] > 0.7 > 0.3 > q["mean_w_noisy"] and q["mean_weight_noisy"] < 0.02
    assert q["num_corrupted"] == int(noise.corrupted.sum()) and q["threshold"] == 0.5
    png = plot_weight_histograms(w, noise.corrupted, w**3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
