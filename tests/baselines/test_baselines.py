"""Tests of the classical cross-modal hashing baselines (CCA+ITQ, ridge+PCA+ITQ)."""

from __future__ import annotations

import numpy as np
import pytest

from tfduch.baselines import CCAITQ, RidgePCAITQ, itq, quantization_error, sign_codes
from tfduch.eval import map_at_k

N_CLASSES = 5


def _paired_views(seed: int, n: int = 900, d_img: int = 300, d_txt: int = 64, latent: int = 8):
    """Both modalities are noisy linear views of a shared latent that clusters by class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    centres = rng.standard_normal((N_CLASSES, latent))
    z = centres[labels] + 0.5 * rng.standard_normal((n, latent))
    x_img = z @ rng.standard_normal((latent, d_img)) + 3.0 + rng.standard_normal((n, d_img))
    x_txt = z @ rng.standard_normal((latent, d_txt)) - 1.0 + rng.standard_normal((n, d_txt))
    split = {"train": slice(0, 400), "query": slice(400, 500), "db": slice(500, n)}
    return x_img.astype(np.float32), x_txt.astype(np.float32), labels, split


@pytest.fixture(scope="module")
def data():
    return _paired_views(0)


@pytest.mark.parametrize("model_cls", [CCAITQ, RidgePCAITQ])
def test_cross_modal_map_well_above_chance(data, model_cls):
    x_img, x_txt, labels, s = data
    model = model_cls(16).fit(x_img[s["train"]], x_txt[s["train"]])
    img_q, txt_q = model.encode_image(x_img[s["query"]]), model.encode_text(x_txt[s["query"]])
    img_db, txt_db = model.encode_image(x_img[s["db"]]), model.encode_text(x_txt[s["db"]])
    for codes in (img_q, txt_q, img_db, txt_db):
        assert codes.dtype == np.int8 and codes.shape[1] == 16
        assert set(np.unique(codes)) <= {-1, 1}
    assert img_q.shape == (100, 16) and txt_db.shape == (400, 16)
    chance = 1 / N_CLASSES
    ql, dbl = labels[s["query"]], labels[s["db"]]
    for q, db in ((img_q, txt_db), (txt_q, img_db)):
        m = map_at_k(q, db, ql, dbl, k=20)
        assert m > chance + 0.4, f"{model_cls.__name__} cross-modal mAP@20 {m:.3f} (chance {chance})"
    # Paired items get close codes: the mean Hamming distance of a pair is far below K/2.
    pair_dist = np.mean(np.sum(img_q != txt_q, axis=1))
    assert pair_dist < 16 / 4


def test_itq_reduces_quantization_error():
    rng = np.random.default_rng(1)
    # Correlated, centred data: the unrotated projection is badly quantised.
    v = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    v -= v.mean(axis=0)
    r = itq(v, n_iter=50, seed=0)
    np.testing.assert_allclose(r.T @ r, np.eye(12), atol=1e-10)
    err_itq = quantization_error(v, r)
    assert err_itq < quantization_error(v)  # vs no rotation
    assert err_itq < quantization_error(v, itq(v, n_iter=0, seed=0))  # vs its random start
    np.testing.assert_array_equal(r, itq(v, n_iter=50, seed=0))  # seeded: reproducible


@pytest.mark.parametrize("model_cls", [CCAITQ, RidgePCAITQ])
def test_itq_rotation_lowers_fitted_quantization_error(data, model_cls):
    x_img, x_txt, _, s = data
    model = model_cls(16).fit(x_img[s["train"]], x_txt[s["train"]])
    rotated = np.concatenate([model.project_image(x_img[s["train"]]), model.project_text(x_txt[s["train"]])])
    unrotated = rotated @ model.rotation_.T
    assert quantization_error(rotated) < quantization_error(unrotated)


def test_fit_is_deterministic_and_encodes_consistently(data):
    x_img, x_txt, _, s = data
    a = CCAITQ(8, seed=3).fit(x_img[s["train"]], x_txt[s["train"]])
    b = CCAITQ(8, seed=3).fit(x_img[s["train"]], x_txt[s["train"]])
    np.testing.assert_array_equal(a.encode_image(x_img[s["db"]]), b.encode_image(x_img[s["db"]]))
    np.testing.assert_array_equal(a.encode_text(x_txt[:5]), sign_codes(a.project_text(x_txt[:5])))
    assert np.all(np.diff(a.correlations_) <= 1e-12) and a.correlations_[0] <= 1 + 1e-9


def test_wide_features_fewer_pairs_than_dimensions():
    # 60 pairs, 300-d images: the Gram (dual) paths are used; the map must equal the primal ridge.
    x_img, x_txt, _, _ = _paired_views(2, n=60)
    model = RidgePCAITQ(8, alpha=0.5).fit(x_img, x_txt)
    xi, xt = x_img.astype(np.float64), x_txt.astype(np.float64)
    xi, xt = xi - xi.mean(axis=0), xt - xt.mean(axis=0)
    lam = 0.5 * np.sum(xi**2) / xi.shape[1]
    primal = np.linalg.solve(xi.T @ xi + lam * np.eye(xi.shape[1]), xi.T @ xt)
    np.testing.assert_allclose(model.map_, primal, rtol=1e-6, atol=1e-9)
    cca = CCAITQ(8).fit(x_img, x_txt)
    assert cca.encode_image(x_img).shape == (60, 8) and np.all(cca.correlations_ <= 1 + 1e-9)


def test_sign_maps_zero_to_plus_one():
    np.testing.assert_array_equal(sign_codes(np.array([[-0.5, 0.0, 2.0]])), [[-1, 1, 1]])


def test_errors(data):
    x_img, x_txt, _, _ = data
    with pytest.raises(RuntimeError):
        CCAITQ(8).encode_image(x_img[:3])
    with pytest.raises(ValueError):
        CCAITQ(8).fit(x_img[:10], x_txt[:9])  # not paired
    with pytest.raises(ValueError):
        CCAITQ(65).fit(x_img, x_txt)  # more bits than text dimensions
    with pytest.raises(ValueError):
        RidgePCAITQ(65).fit(x_img, x_txt)
    model = RidgePCAITQ(8).fit(x_img[:100], x_txt[:100])
    with pytest.raises(ValueError):
        model.encode_image(x_txt[:3])  # wrong modality / dimension
    with pytest.raises(ValueError):
        CCAITQ(0)
