"""Injected caption noise and the trusted (clean) subset, for experiments on noisy image–caption pairs.

Noise model (CHNR, Mikriukov et al. 2022): each training pair's captions are replaced, with
probability ``p``, by the captions of a training image of a *different* class; a fixed share of the
training set (``protected_fraction``, 20 % in the reference) is never corrupted. Every random draw
(the protected set, one uniform number and one donor per item) is made once per seed and does not
depend on ``p``, so the corrupted set at a lower ``p`` is a subset of the one at a higher ``p`` and a
sweep compares like with like. The result is saved as JSON so every method trains on identical noise.

The clean subset is the share of pairs a method may trust (CHNR learns its noise detector there). It
is drawn from pairs that are not corrupted — protected pairs first — so it never contradicts the
injected noise and never changes it.

Everything here is in *training positions* (rows of ``ProtocolSplit.train``); the JSON also stores
the dataset indices so a file can be checked against a split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.io import atomic_write_json

FORMAT = "tfduch-caption-noise-v1"


@dataclass(frozen=True)
class CaptionNoise:
    """Which training pairs carry another image's captions, and whose; optionally which pairs are trusted."""

    p: float
    seed: int
    protected_fraction: float
    donor: np.ndarray  # [N] training position whose captions item i carries (i itself when clean)
    protected: np.ndarray  # [N] bool, never corrupted
    clean: np.ndarray | None = None  # [N] bool, the trusted subset (see select_clean_subset)

    def __post_init__(self) -> None:
        n = len(self.donor)
        for name in ("protected", "clean"):
            flags = getattr(self, name)
            if flags is not None and len(flags) != n:
                raise DataError(f"caption noise is not aligned: {n} donors but {len(flags)} {name} flags")
        if self.clean is not None and np.any(self.clean & self.corrupted):
            raise DataError("the clean subset must not contain corrupted pairs")
        if n and (self.donor.min() < 0 or self.donor.max() >= n):
            raise DataError(f"caption noise donors must be training positions in [0, {n})")

    def __len__(self) -> int:
        return len(self.donor)

    @property
    def corrupted(self) -> np.ndarray:
        """``[N]`` bool: the pair's captions belong to another image."""
        return self.donor != np.arange(len(self))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows of a per-item caption array as the noisy training set sees them (``rows[donor]``)."""
        rows = np.asarray(rows)
        if len(rows) != len(self):
            raise DataError(f"cannot apply caption noise for {len(self)} items to an array of {len(rows)} rows")
        return rows[self.donor]


def make_caption_noise(labels: np.ndarray, p: float, seed: int = 0, protected_fraction: float = 0.2) -> CaptionNoise:
    """Draw the noise for training items with class ``labels`` (``[N]`` int)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"caption noise needs single-label class ids [N], got shape {labels.shape}")
    if not 0 <= p < 1 or not 0 <= protected_fraction < 1:
        raise DataError(f"noise p={p} and protected_fraction={protected_fraction} must both be in [0, 1)")
    n = len(labels)
    rng = np.random.default_rng(seed)
    protected = np.zeros(n, bool)
    protected[rng.permutation(n)[: int(round(protected_fraction * n))]] = True
    roll = rng.random(n)
    pick = rng.random(n)  # which other-class donor, as a quantile of that item's candidates
    corrupt = (roll < p) & ~protected
    donor = np.arange(n)
    order = np.argsort(labels, kind="stable")  # items grouped by class: candidates = all but own block
    sorted_labels = labels[order]
    for i in np.flatnonzero(corrupt):
        lo, hi = np.searchsorted(sorted_labels, labels[i], "left"), np.searchsorted(sorted_labels, labels[i], "right")
        n_other = n - (hi - lo)
        if n_other == 0:
            raise DataError("caption noise needs at least two classes among the training items")
        j = min(int(pick[i] * n_other), n_other - 1)
        donor[i] = order[j if j < lo else j + (hi - lo)]
    return CaptionNoise(float(p), int(seed), float(protected_fraction), donor, protected)


def select_clean_subset(noise: CaptionNoise, fraction: float, seed: int = 0) -> CaptionNoise:
    """The noise with ``clean`` set: ``fraction`` of the pairs, protected ones first, then other uncorrupted ones."""
    n = len(noise)
    k = int(round(fraction * n))
    order = np.random.default_rng([seed, 1]).permutation(n)
    clean = ~noise.corrupted
    ranked = np.concatenate([order[noise.protected[order]], order[clean[order] & ~noise.protected[order]]])
    if k > len(ranked):
        raise DataError(f"a clean subset of {fraction:.0%} ({k} pairs) is larger than the {len(ranked)} uncorrupted "
                        f"pairs at noise p={noise.p}: lower noise.clean_fraction")
    mask = np.zeros(n, bool)
    mask[ranked[:k]] = True
    return dataclasses.replace(noise, clean=mask)


def save_caption_noise(path: str | os.PathLike[str], noise: CaptionNoise, train_indices: np.ndarray,
                       split_digest: str) -> Path:
    """Write the noise (and the clean subset) as JSON, with dataset indices for the corrupted pairs."""
    train_indices = np.asarray(train_indices)
    corrupted = np.flatnonzero(noise.corrupted)
    payload: dict[str, Any] = {
        "format": FORMAT, "p": noise.p, "seed": noise.seed, "protected_fraction": noise.protected_fraction,
        "split_digest": split_digest, "num_train": len(noise),
        "corrupted_indices": train_indices[corrupted].tolist(),
        "corrupted_donor_indices": train_indices[noise.donor[corrupted]].tolist(),
        "protected_indices": train_indices[noise.protected].tolist(),
        "train_indices": train_indices.tolist(),
    }
    if noise.clean is not None:
        payload["clean_indices"] = train_indices[noise.clean].tolist()
    return atomic_write_json(path, payload)


def load_caption_noise(path: str | os.PathLike[str], train_indices: np.ndarray,
                       split_digest: str | None = None) -> CaptionNoise:
    """Read a noise file made for this split (with its clean subset, if the file has one)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read caption noise: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path}: not a caption-noise file (expected format {FORMAT!r})")
    train_indices = np.asarray(train_indices)
    if raw["train_indices"] != train_indices.tolist() or (split_digest and raw["split_digest"] != split_digest):
        raise DataError(f"{path}: made for another protocol split (split digest {raw['split_digest']}); delete it "
                        "or point noise.file elsewhere")
    position = {int(d): i for i, d in enumerate(train_indices)}

    def positions(key: str) -> np.ndarray:
        try:
            return np.array([position[int(d)] for d in raw[key]], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{path}: {key} holds dataset index {exc} that is not a training item") from exc

    n = len(train_indices)
    donor = np.arange(n)
    donor[positions("corrupted_indices")] = positions("corrupted_donor_indices")
    protected = np.zeros(n, bool)
    protected[positions("protected_indices")] = True
    clean = None
    if "clean_indices" in raw:
        clean = np.zeros(n, bool)
        clean[positions("clean_indices")] = True
    return CaptionNoise(float(raw["p"]), int(raw["seed"]), float(raw["protected_fraction"]), donor, protected, clean)


def load_or_make_caption_noise(path: str | os.PathLike[str], labels: np.ndarray, train_indices: np.ndarray,
                               split_digest: str, p: float, seed: int, protected_fraction: float,
                               clean_fraction: float) -> CaptionNoise:
    """Reuse the noise file at ``path`` when it matches the settings, else draw it (and the clean subset) and save."""
    path = Path(path)
    if path.is_file():
        noise = load_caption_noise(path, train_indices, split_digest)
        settings = {"p": (noise.p, p), "seed": (noise.seed, seed),
                    "protected_fraction": (noise.protected_fraction, protected_fraction)}
        wrong = {k: v for k, v in settings.items() if not np.isclose(v[0], v[1])}
        if noise.clean is not None and int(noise.clean.sum()) != int(round(clean_fraction * len(noise))):
            wrong["clean_fraction"] = (noise.clean.mean(), clean_fraction)
        if wrong:
            detail = ", ".join(f"{k}: file {a}, config {b}" for k, (a, b) in wrong.items())
            raise DataError(f"{path}: caption noise was drawn with other settings ({detail}); delete it or point "
                            "noise.file elsewhere")
        if noise.clean is not None:
            return noise
    else:
        noise = make_caption_noise(labels, p, seed, protected_fraction)
    noise = select_clean_subset(noise, clean_fraction, seed)
    save_caption_noise(path, noise, train_indices, split_digest)
    return noise
