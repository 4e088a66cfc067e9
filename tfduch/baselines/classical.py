"""Classical unsupervised cross-modal hashing baselines: CCA+ITQ and ridge+PCA+ITQ.

Why these exist: a deep hashing model is only worth its training cost if it beats what linear
algebra gets from the *same* frozen features. These two closed-form methods are the rows users
compare DUCH with in the benchmark tables. They fit in seconds on the training split's paired
image/text features (e.g. 1280-d EfficientNet, 384-d MiniLM), need no labels, and produce ±1
``int8`` codes consumed by :mod:`tfduch.eval` exactly like DUCH's codes.

* :class:`CCAITQ` — regularised CCA finds directions in which paired image and text features are
  maximally correlated, i.e. a shared space; one ITQ rotation (Gong & Lazebnik, CVPR 2011 / PAMI
  2013) learned on both modalities' projected training data turns it into balanced binary codes.
* :class:`RidgePCAITQ` — ridge regression maps image features into the text feature space, PCA of
  that space (real texts and mapped images together) keeps ``bits`` directions, ITQ binarises.
  Asymmetric on purpose: text embeddings are the cleaner semantic space.

All fits centre each modality with its training mean; ridge terms are given *relative* to the mean
variance of the features (``reg * trace(C) / d``) so that the defaults work whatever the feature
scale. Code bits are ``sign`` with ``0 → +1``.
"""

from __future__ import annotations

import numpy as np

from tfduch.codes import sign

__all__ = ["CCAITQ", "LinearHasher", "RidgePCAITQ", "itq", "quantization_error", "sign_codes"]


sign_codes = sign  # the one sign of tfduch.codes: +1 where x >= 0 (0 maps to +1), else -1


def quantization_error(v: np.ndarray, r: np.ndarray | None = None) -> float:
    """``||sign(V R) - V R||_F^2 / N``, the objective ITQ minimises (``r=None``: no rotation)."""
    vr = np.asarray(v, dtype=np.float64) if r is None else np.asarray(v, np.float64) @ r
    return float(np.sum((sign_codes(vr) - vr) ** 2) / max(1, vr.shape[0]))


def itq(v: np.ndarray, n_iter: int = 50, seed: int = 0) -> np.ndarray:
    """Iterative quantisation: an orthogonal ``R [K, K]`` making ``sign(V R)`` close to ``V R``.

    ``v`` is zero-centred projected data ``[N, K]``. Alternates ``B = sign(V R)`` and the orthogonal
    Procrustes step ``R = U W^T`` with ``U Σ W^T = svd(V^T B)``, from a random orthogonal start
    (seeded, so fits are reproducible). Each step cannot increase the quantisation error.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"itq expects [N, K] data, got shape {v.shape}")
    k = v.shape[1]
    rng = np.random.default_rng(seed)
    q, rr = np.linalg.qr(rng.standard_normal((k, k)))
    r = q * np.sign(np.diag(rr))  # uniform (Haar) random rotation
    for _ in range(int(n_iter)):
        b = sign_codes(v @ r).astype(np.float64)
        u, _, wt = np.linalg.svd(v.T @ b)
        r = u @ wt
    return r


def _as_features(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] feature matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} feature dimensions, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return arr


def _check_pairs(x_img: np.ndarray, x_txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xi = _as_features(x_img, "image features")
    xt = _as_features(x_txt, "text features")
    if xi.shape[0] != xt.shape[0]:
        raise ValueError(f"{xi.shape[0]} image features but {xt.shape[0]} text features: fit needs pairs")
    if xi.shape[0] < 2:
        raise ValueError("fit needs at least two training pairs")
    return xi, xt


def _ridged_whitener(xc: np.ndarray, reg: float) -> np.ndarray:
    """``A [D, r]`` with ``A^T (C + λI) A = I`` on the data's span, ``C = Xc^T Xc / (n-1)``.

    ``λ = reg * trace(C) / D``. Directions outside the span of the training data carry no
    cross-covariance, so CCA never needs them; dropping them lets us decompose the smaller of the
    ``D × D`` covariance and the ``n × n`` Gram matrix (few pairs, wide image features).
    """
    n, d = xc.shape
    if d <= n:
        evals, vecs = np.linalg.eigh(xc.T @ xc / (n - 1))
    else:
        evals, u = np.linalg.eigh(xc @ xc.T / (n - 1))
        keep = evals > evals.max() * 1e-10
        evals, u = evals[keep], u[:, keep]
        vecs = xc.T @ u / np.sqrt(evals * (n - 1))  # unit-norm right singular vectors
    lam = reg * max(float(np.sum(evals)), 0.0) / d + 1e-12
    return vecs / np.sqrt(np.maximum(evals, 0.0) + lam)


def _top_eigvecs(c: np.ndarray, n: int) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    v = v[:, np.argsort(w)[::-1][:n]]
    # Fix each eigenvector's sign (largest entry positive) so fits do not depend on the LAPACK build.
    return v * np.where(v[np.abs(v).argmax(axis=0), np.arange(n)] >= 0, 1.0, -1.0)


class LinearHasher:
    """Shared encode logic: ``codes = sign((X - mean) @ projection)`` per modality."""

    bits: int
    image_mean_: np.ndarray
    text_mean_: np.ndarray
    image_projection_: np.ndarray  # [D_img, bits], rotation included
    text_projection_: np.ndarray  # [D_txt, bits], rotation included

    def _check_fitted(self) -> None:
        if not hasattr(self, "image_projection_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(X_img, X_txt) first")

    def project_image(self, x: np.ndarray) -> np.ndarray:
        """Real-valued image embedding ``[N, bits]`` before the sign."""
        self._check_fitted()
        x = _as_features(x, "image features", self.image_mean_.shape[0])
        return (x - self.image_mean_) @ self.image_projection_

    def project_text(self, x: np.ndarray) -> np.ndarray:
        """Real-valued text embedding ``[N, bits]`` before the sign."""
        self._check_fitted()
        x = _as_features(x, "text features", self.text_mean_.shape[0])
        return (x - self.text_mean_) @ self.text_projection_

    def encode_image(self, x: np.ndarray) -> np.ndarray:
        """``int8`` ±1 codes ``[N, bits]`` of image features ``[N, D_img]``."""
        return sign_codes(self.project_image(x))

    def encode_text(self, x: np.ndarray) -> np.ndarray:
        """``int8`` ±1 codes ``[N, bits]`` of text features ``[N, D_txt]``."""
        return sign_codes(self.project_text(x))


class CCAITQ(LinearHasher):
    """Regularised CCA to a shared ``bits``-dimensional space, then one ITQ rotation for both modalities.

    ``reg`` is the ridge added to each covariance, relative to its mean variance; it keeps the
    whitening stable when there are fewer training pairs than image dimensions (UC Merced: ~1k
    pairs, 1280-d), where unregularised CCA finds spurious perfect correlations. Each canonical
    direction is weighted by its correlation to the power ``corr_power`` before ITQ (as in Gong et
    al.'s multi-view CCA embedding), so that when ``bits`` exceeds the number of truly shared
    directions the weak, noisy ones barely move the codes; ``corr_power=0`` is plain CCA+ITQ.
    ``bits`` cannot exceed the smaller feature dimension.
    """

    def __init__(self, bits: int, reg: float = 1.0, corr_power: float = 4.0, n_iter: int = 50,
                 seed: int = 0) -> None:
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.bits, self.reg, self.corr_power = int(bits), float(reg), float(corr_power)
        self.n_iter, self.seed = int(n_iter), int(seed)

    def fit(self, x_img: np.ndarray, x_txt: np.ndarray) -> CCAITQ:
        """Fit on paired training features ``[N, D_img]`` and ``[N, D_txt]`` (row i of each is a pair)."""
        xi, xt = _check_pairs(x_img, x_txt)
        if self.bits > min(xi.shape[1], xt.shape[1]):
            raise ValueError(f"CCA gives at most min(D_img, D_txt) = {min(xi.shape[1], xt.shape[1])} "
                             f"directions, asked for {self.bits} bits")
        self.image_mean_, self.text_mean_ = xi.mean(axis=0), xt.mean(axis=0)
        xic, xtc = xi - self.image_mean_, xt - self.text_mean_
        ai, at = _ridged_whitener(xic, self.reg), _ridged_whitener(xtc, self.reg)
        zi, zt = xic @ ai, xtc @ at  # whitened training data
        u, s, vt = np.linalg.svd(zi.T @ zt / (xi.shape[0] - 1), full_matrices=False)
        if self.bits > s.shape[0]:
            raise ValueError(f"the training data span only {s.shape[0]} canonical directions, "
                             f"asked for {self.bits} bits")
        self.correlations_ = s[: self.bits]
        weight = np.maximum(self.correlations_, 0.0) ** self.corr_power
        a, b = ai @ u[:, : self.bits] * weight, at @ vt[: self.bits].T * weight
        stacked = np.concatenate([xic @ a, xtc @ b], axis=0)
        self.rotation_ = itq(stacked, self.n_iter, self.seed)
        self.image_projection_, self.text_projection_ = a @ self.rotation_, b @ self.rotation_
        return self


class RidgePCAITQ(LinearHasher):
    """Ridge map image→text features, PCA of the text space, ITQ; images are encoded through the map.

    ``alpha`` is the ridge strength relative to the data's own scale: the penalty is
    ``alpha * trace(Xc^T Xc) / D_img`` (``alpha`` times the mean feature variance, per training
    pair). The closed form is solved in its primal or dual form, whichever system is smaller.
    ``bits`` cannot exceed the text dimension.
    """

    def __init__(self, bits: int, alpha: float = 1e-1, n_iter: int = 50, seed: int = 0) -> None:
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.bits, self.alpha, self.n_iter, self.seed = int(bits), float(alpha), int(n_iter), int(seed)

    def fit(self, x_img: np.ndarray, x_txt: np.ndarray) -> RidgePCAITQ:
        """Fit on paired training features ``[N, D_img]`` and ``[N, D_txt]`` (row i of each is a pair)."""
        xi, xt = _check_pairs(x_img, x_txt)
        if self.bits > xt.shape[1]:
            raise ValueError(f"PCA of the {xt.shape[1]}-d text space gives at most {xt.shape[1]} "
                             f"directions, asked for {self.bits} bits")
        self.image_mean_, self.text_mean_ = xi.mean(axis=0), xt.mean(axis=0)
        xic, xtc = xi - self.image_mean_, xt - self.text_mean_
        n, d = xic.shape
        lam = self.alpha * float(np.sum(xic * xic)) / d + 1e-12
        if d <= n:  # primal: (X^T X + λI) W = X^T Y
            self.map_ = np.linalg.solve(xic.T @ xic + lam * np.eye(d), xic.T @ xtc)
        else:  # dual, same solution: W = X^T (X X^T + λI)^-1 Y
            self.map_ = xic.T @ np.linalg.solve(xic @ xic.T + lam * np.eye(n), xtc)
        stacked = np.concatenate([xtc, xic @ self.map_], axis=0)  # both zero-mean on the training set
        pca = _top_eigvecs(stacked.T @ stacked / (stacked.shape[0] - 1), self.bits)
        self.rotation_ = itq(stacked @ pca, self.n_iter, self.seed)
        self.text_projection_ = pca @ self.rotation_
        self.image_projection_ = self.map_ @ self.text_projection_
        return self
