"""The DUCH evaluation protocol split, drawn by image and persisted so every run uses the same one.

Two ways to draw the images of each set (``method``):

- ``reference`` (default): the draw of the DUCH reference code (``comrados/duch``, ``get_split_idxs``):
  ``random.seed(seed)``; train = ``sorted(random.sample(range(N), int(train_fraction · N)))``; query =
  ``sorted(random.sample(rest, int(query_fraction · len(rest))))`` with ``rest`` the sorted remainder;
  database = the remainder. With seed 42 the query images are exactly the reference's, so numbers compare
  with the published rows on the same images (split-to-split spread at 64 bits is ≈ ±0.01 mAP@20).
- ``numpy`` (tfduch 0.1's draw, kept for old run folders): ``perm = np.random.default_rng(seed)
  .permutation(N)``; train = the first ``round(train_fraction · N)`` images of ``perm``; of the rest, query =
  the first ``round(query_fraction · rest)``, database = the remainder (rounding half-up).

Either way, one caption index per image is then drawn as ``np.random.default_rng(seed)`` after one
``permutation(N)`` (``caption_choice[i]`` uniform over image ``i``'s captions). Index arrays are stored
**sorted**, so ranking ties broken by database position are broken by dataset index.
UCM (N=2100): 1050 / 210 / 840 with either method.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.config import SPLIT_METHODS
from tfduch.data.karpathy import CaptionDataset
from tfduch.errors import ConfigError, DataError
from tfduch.io import atomic_write_text

__all__ = ["ProtocolSplit", "make_split", "load_or_make_split", "split_sizes"]

_FORMAT = "tfduch-protocol-split-v1"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_sizes(n: int, train_fraction: float = 0.5, query_fraction: float = 0.2,
                method: str = "reference") -> tuple[int, int, int]:
    """(train, query, database) sizes for ``n`` images; ``reference`` truncates as ``int()``, ``numpy`` rounds."""
    rounding = int if method == "reference" else _round_half_up
    n_train = rounding(train_fraction * n)
    rest = n - n_train
    n_query = rounding(query_fraction * rest)
    return n_train, n_query, rest - n_query


@dataclass
class ProtocolSplit:
    """Image indices of the train / query / database sets plus the caption used for each image."""

    seed: int
    dataset_fingerprint: str
    train: np.ndarray
    query: np.ndarray
    database: np.ndarray
    caption_choice: np.ndarray
    train_fraction: float = 0.5
    query_fraction: float = 0.2
    method: str = "reference"

    def __post_init__(self) -> None:
        self.train = np.asarray(self.train, dtype=np.int64)
        self.query = np.asarray(self.query, dtype=np.int64)
        self.database = np.asarray(self.database, dtype=np.int64)
        self.caption_choice = np.asarray(self.caption_choice, dtype=np.int64)

    @property
    def n_images(self) -> int:
        return int(self.caption_choice.shape[0])

    def validate(self, where: str = "split") -> None:
        """Raise :class:`DataError` unless the three sets are disjoint and cover ``0..N-1``."""
        n = self.n_images
        parts = {"train": self.train, "query": self.query, "database": self.database}
        for part_name, arr in parts.items():
            if arr.ndim != 1 or arr.size == 0:
                raise DataError(f"{where}: '{part_name}' must be a non-empty list of image indices")
        allidx = np.concatenate(list(parts.values()))
        if allidx.size != n or not np.array_equal(np.sort(allidx), np.arange(n)):
            raise DataError(
                f"{where}: train/query/database ({self.train.size}/{self.query.size}/{self.database.size}) "
                f"are not a disjoint cover of the {n} images"
            )
        if self.caption_choice.ndim != 1 or (self.caption_choice < 0).any():
            raise DataError(f"{where}: 'caption_choice' must be a list of non-negative caption indices")

    def matches(self, dataset_fingerprint: str, seed: int, train_fraction: float, query_fraction: float,
                method: str = "reference") -> bool:
        return (
            self.dataset_fingerprint == dataset_fingerprint
            and self.method == method
            and self.seed == seed
            and math.isclose(self.train_fraction, train_fraction)
            and math.isclose(self.query_fraction, query_fraction)
        )

    def to_dict(self) -> dict[str, Any]:
        # Files of the ``numpy`` draw carry no "method" key: they are byte-compatible with (and keep the
        # digests of) split files written before the reference draw existed.
        method = {} if self.method == "numpy" else {"method": self.method}
        return {
            "format": _FORMAT,
            **method,
            "seed": int(self.seed),
            "train_fraction": float(self.train_fraction),
            "query_fraction": float(self.query_fraction),
            "dataset_fingerprint": self.dataset_fingerprint,
            "n_images": self.n_images,
            "train": self.train.tolist(),
            "query": self.query.tolist(),
            "database": self.database.tolist(),
            "caption_choice": self.caption_choice.tolist(),
        }

    def digest(self) -> str:
        """Short (16 hex) sha256 of the split content; part of feature-cache / run keys."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the split as JSON atomically (temp file in the same folder + ``os.replace``)."""
        path = Path(path)
        record = self.to_dict()
        record["digest"] = self.digest()
        atomic_write_text(path, json.dumps(record))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProtocolSplit:
        """Read a split written by :meth:`save`; a damaged or foreign file raises :class:`DataError`."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError as exc:
            raise DataError(f"split file not found: {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read split file: {exc}") from exc
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise DataError(f"{path}: not a tfduch split file (expected format {_FORMAT!r})")
        try:
            split = cls(
                seed=int(record["seed"]),
                dataset_fingerprint=str(record["dataset_fingerprint"]),
                train=np.asarray(record["train"], dtype=np.int64),
                query=np.asarray(record["query"], dtype=np.int64),
                database=np.asarray(record["database"], dtype=np.int64),
                caption_choice=np.asarray(record["caption_choice"], dtype=np.int64),
                train_fraction=float(record["train_fraction"]),
                query_fraction=float(record["query_fraction"]),
                method=str(record.get("method", "numpy")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed split file ({type(exc).__name__}: {exc})") from exc
        split.validate(str(path))
        if "digest" in record and record["digest"] != split.digest():
            raise DataError(f"{path}: split content does not match its stored digest (file edited?)")
        return split


def make_split(
    dataset: CaptionDataset,
    seed: int = 42,
    train_fraction: float = 0.5,
    query_fraction: float = 0.2,
    method: str = "reference",
) -> ProtocolSplit:
    """Draw the protocol split for ``dataset`` (see module docstring); deterministic in ``seed``."""
    for key, value in (("train_fraction", train_fraction), ("query_fraction", query_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{key} must be in (0, 1), got {value}")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split method must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    n = len(dataset)
    n_train, n_query, n_db = split_sizes(n, train_fraction, query_fraction, method)
    if min(n_train, n_query, n_db) <= 0:
        raise DataError(
            f"dataset {dataset.name!r} has {n} images: too few for a split with "
            f"train_fraction={train_fraction}, query_fraction={query_fraction} "
            f"(sizes {n_train}/{n_query}/{n_db})"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    counts = dataset.captions_per_image
    caption_choice = rng.integers(0, counts)  # one draw per image, in dataset order
    if method == "reference":
        train, query, database = _reference_draw(n, seed, n_train, n_query)
    else:
        train, query, database = perm[:n_train], perm[n_train : n_train + n_query], perm[n_train + n_query :]
    return ProtocolSplit(
        seed=int(seed),
        dataset_fingerprint=dataset.fingerprint(),
        train=np.sort(train),
        query=np.sort(query),
        database=np.sort(database),
        caption_choice=caption_choice,
        train_fraction=float(train_fraction),
        query_fraction=float(query_fraction),
        method=method,
    )


def _reference_draw(n: int, seed: int, n_train: int, n_query: int) -> tuple[list[int], list[int], list[int]]:
    """The DUCH reference's image draw: Python's ``random`` (Mersenne Twister), two sorted samples.

    A private ``random.Random`` so the global generator is left alone; it draws what the reference's
    ``random.seed(seed)`` followed by ``random.sample`` draws.
    """
    rng = random.Random(seed)
    everything = list(range(n))
    train = sorted(rng.sample(everything, n_train))
    in_train = set(train)
    rest = [i for i in everything if i not in in_train]
    query = sorted(rng.sample(rest, n_query))
    in_query = set(query)
    return train, query, [i for i in rest if i not in in_query]


def load_or_make_split(
    dataset: CaptionDataset,
    path: str | os.PathLike[str],
    seed: int = 42,
    train_fraction: float = 0.5,
    query_fraction: float = 0.2,
    method: str = "reference",
) -> ProtocolSplit:
    """Reuse the split saved at ``path`` if it was made for this dataset and these settings; else
    make and save one. A file made for other data / settings is never overwritten silently: it raises
    :class:`DataError` telling to delete it or choose another path."""
    path = Path(path)
    fingerprint = dataset.fingerprint()
    if path.exists():
        split = ProtocolSplit.load(path)
        if split.matches(fingerprint, seed, train_fraction, query_fraction, method):
            if split.n_images != len(dataset):  # cannot happen with a matching fingerprint, but be explicit
                raise DataError(f"{path}: split covers {split.n_images} images, dataset has {len(dataset)}")
            return split
        diffs = []
        if split.dataset_fingerprint != fingerprint:
            diffs.append(
                f"dataset fingerprint {split.dataset_fingerprint[:12]}… ≠ {fingerprint[:12]}… "
                f"(dataset {dataset.name!r} changed or is a different one)"
            )
        if split.method != method:
            diffs.append(f"split method {split.method!r} ≠ {method!r} (data.split_method)")
        if split.seed != seed:
            diffs.append(f"seed {split.seed} ≠ {seed}")
        if not math.isclose(split.train_fraction, train_fraction):
            diffs.append(f"train_fraction {split.train_fraction} ≠ {train_fraction}")
        if not math.isclose(split.query_fraction, query_fraction):
            diffs.append(f"query_fraction {split.query_fraction} ≠ {query_fraction}")
        raise DataError(
            f"{path}: saved split does not match ({'; '.join(diffs)}). Delete the file to draw a new "
            "split, or use another split path."
        )
    split = make_split(dataset, seed=seed, train_fraction=train_fraction, query_fraction=query_fraction,
                       method=method)
    split.save(path)
    return split
