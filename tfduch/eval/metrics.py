"""Retrieval metrics on Hamming rankings: mAP@K (two definitions), P@K curves, PR curves.

Relevance: a database item is relevant to a query when they share at least one label. Labels are
``int [N]`` (single label, e.g. the UC Merced class) or ``[N, C]`` multi-hot.

Two mAP@K definitions are reported because the literature mixes them:

``definition="reference"`` — DUCH's ``calc_map_k`` (the numbers in the DUCH paper and its tables).
    For each query the **whole** database is ranked; ``R`` is the number of relevant items in it.
    The first ``m = min(K, R)`` relevant items of that full ranking sit at 1-based positions
    ``p_1 < … < p_m`` and ``AP = (1/m) Σ_j j / p_j``. Relevant items beyond position K still count,
    so this is not a "top-K" metric: it averages the precision at the first K *relevant* hits.
    A query with ``R = 0`` contributes 0 but still counts in the mean (``sum AP / num_query``).

``definition="standard"`` — the textbook AP@K over the top-K list only:
    ``AP@K = (1 / n_K) Σ_{i ≤ K, rel_i} P@i`` where ``n_K`` is the number of relevant items in the
    top K and ``P@i`` the precision of the top i; ``AP@K = 0`` when ``n_K = 0``. mAP is the mean
    over all queries.

For one query the two agree exactly when its top K holds ``min(K, R)`` relevant items; otherwise
the reference value also averages precisions at hits found after position K (usually lower, not
always), and the standard value averages only over the hits inside the top K.

All rankings break ties by database index (see :mod:`tfduch.eval.ranking`). Everything is
computed block by block over queries, so memory stays bounded for large query × database sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tfduch.codes import DEFAULT_BLOCK_ELEMENTS, check_code_pair, distances_block, iter_query_blocks
from tfduch.eval.ranking import rank_block

__all__ = [
    "DIRECTIONS",
    "DirectionResult",
    "PRCurve",
    "RetrievalReport",
    "direction_metrics",
    "evaluate_retrieval",
    "map_at_k",
    "precision_at_k_curve",
    "precision_recall_curve",
    "relevance_matrix",
]

MapDefinition = Literal["reference", "standard"]

#: Direction name → (query modality, database modality).
DIRECTIONS: dict[str, tuple[str, str]] = {
    "i2t": ("image", "text"),
    "t2i": ("text", "image"),
    "i2i": ("image", "image"),
    "t2t": ("text", "text"),
}

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50, 100)


# ----------------------------------------------------------------------------------------------- labels
def check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name}: labels must be [N] class ids or [N, C] multi-hot, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name}: {arr.shape[0]} labels for {n} codes")
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating):
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: single-label labels must be class ids, got non-integer floats")
        arr = arr.astype(np.int64)
    return arr


def relevance_block(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    if q_labels.ndim == 1:
        return q_labels[:, None] == db_labels[None, :]
    return (q_labels.astype(np.float32) @ db_labels.astype(np.float32).T) > 0


def relevance_matrix(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """``bool [Q, N]``: query i and database item j share at least one label."""
    q = check_labels(q_labels, np.asarray(q_labels).shape[0], "query labels")
    db = check_labels(db_labels, np.asarray(db_labels).shape[0], "database labels")
    check_label_kinds(q, db)
    return relevance_block(q, db)


def check_label_kinds(q: np.ndarray, db: np.ndarray) -> None:
    if q.ndim != db.ndim:
        raise ValueError(f"query labels have shape {q.shape} but database labels {db.shape}: "
                         "use class ids for both or multi-hot for both")
    if q.ndim == 2 and q.shape[1] != db.shape[1]:
        raise ValueError(f"multi-hot labels have {q.shape[1]} classes for queries but {db.shape[1]} "
                         "for the database")


# ------------------------------------------------------------------------------------------- core block
@dataclass
class MapAccumulator:
    """Per-query sums gathered block by block, reduced at the end."""

    k: int
    ks: tuple[int, ...]
    n_bits: int
    want_pr: bool
    n_query: int = 0
    ap_reference: list[np.ndarray] = field(default_factory=list)
    ap_standard: list[np.ndarray] = field(default_factory=list)
    hits_at: list[np.ndarray] = field(default_factory=list)  # [b, len(ks)] relevant items in top k
    pr_prec_sum: np.ndarray | None = None
    pr_prec_count: np.ndarray | None = None
    pr_rec_sum: np.ndarray | None = None
    pr_rec_count: int = 0

    def add(self, dist: np.ndarray, rel: np.ndarray) -> None:
        b, n = dist.shape
        self.n_query += b
        order = rank_block(dist, None)
        rel_sorted = np.take_along_axis(rel, order, axis=1)
        csum = np.cumsum(rel_sorted, axis=1, dtype=np.int32)  # relevant items among the first i+1
        n_rel = csum[:, -1] if n else np.zeros(b, np.int32)
        pos = np.arange(1, n + 1, dtype=np.float64)

        # reference (DUCH calc_map_k): relevant hits whose rank among relevant items is <= k
        m = np.minimum(self.k, n_rel)
        take = rel_sorted & (csum <= self.k)
        ref = np.where(take, csum / pos, 0.0).sum(axis=1)
        self.ap_reference.append(np.divide(ref, m, out=np.zeros(b), where=m > 0))

        # standard AP@k over the top-k list only
        kk = min(self.k, n)
        top_rel, top_csum = rel_sorted[:, :kk], csum[:, :kk]
        n_top = top_csum[:, -1] if kk else np.zeros(b, np.int32)
        std = np.where(top_rel, top_csum / pos[:kk], 0.0).sum(axis=1)
        self.ap_standard.append(np.divide(std, n_top, out=np.zeros(b), where=n_top > 0))

        cols = np.array([min(k, n) - 1 for k in self.ks], dtype=np.int64)
        self.hits_at.append(csum[:, cols] if n else np.zeros((b, len(self.ks)), np.int32))

        if self.want_pr:
            self._add_pr(dist, rel, n_rel)

    def _add_pr(self, dist: np.ndarray, rel: np.ndarray, n_rel: np.ndarray) -> None:
        b = dist.shape[0]
        width = self.n_bits + 1
        flat = (np.arange(b, dtype=np.int64)[:, None] * width + dist).ravel()
        all_hist = np.bincount(flat, minlength=b * width).reshape(b, width)
        rel_hist = np.bincount(flat, weights=rel.ravel().astype(np.float64),
                               minlength=b * width).reshape(b, width)
        retrieved = np.cumsum(all_hist, axis=1)  # items within radius r
        hits = np.cumsum(rel_hist, axis=1)
        prec_ok = retrieved > 0
        prec = np.divide(hits, retrieved, out=np.zeros_like(hits), where=prec_ok)
        rec_ok = n_rel > 0
        rec = hits[rec_ok] / n_rel[rec_ok, None]
        if self.pr_prec_sum is None:
            self.pr_prec_sum = np.zeros(width)
            self.pr_prec_count = np.zeros(width, dtype=np.int64)
            self.pr_rec_sum = np.zeros(width)
        self.pr_prec_sum += prec.sum(axis=0)
        self.pr_prec_count += prec_ok.sum(axis=0)
        self.pr_rec_sum += rec.sum(axis=0)
        self.pr_rec_count += int(rec_ok.sum())

    # reductions
    def map(self, definition: MapDefinition) -> float:
        parts = self.ap_reference if definition == "reference" else self.ap_standard
        if not self.n_query:
            return float("nan")
        return float(np.concatenate(parts).sum() / self.n_query)

    def p_at_k(self, n_db: int) -> np.ndarray:
        if not self.n_query:
            return np.full(len(self.ks), np.nan)
        hits = np.concatenate(self.hits_at).astype(np.float64)
        denom = np.array([min(k, n_db) for k in self.ks], dtype=np.float64)
        return hits.mean(axis=0) / denom

    def pr_curve(self) -> PRCurve:
        width = self.n_bits + 1
        if self.pr_prec_sum is None:
            nan = np.full(width, np.nan)
            return PRCurve(np.arange(width), nan, nan.copy())
        precision = np.divide(self.pr_prec_sum, self.pr_prec_count, out=np.full(width, np.nan),
                              where=self.pr_prec_count > 0)
        recall = (self.pr_rec_sum / self.pr_rec_count if self.pr_rec_count
                  else np.full(width, np.nan))
        return PRCurve(np.arange(width), precision, recall)


def _accumulate(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                k: int | None, ks: Sequence[int], want_pr: bool,
                block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[MapAccumulator, int]:
    q, db = check_code_pair(q_codes, db_codes)
    ql = check_labels(q_labels, q.shape[0], "query labels")
    dbl = check_labels(db_labels, db.shape[0], "database labels")
    check_label_kinds(ql, dbl)
    n_db = db.shape[0]
    if n_db == 0:
        raise ValueError("the database is empty")
    k = n_db if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ks = tuple(int(x) for x in ks)
    if any(x < 1 for x in ks):
        raise ValueError(f"every k in ks must be >= 1, got {ks}")
    acc = MapAccumulator(k=k, ks=ks, n_bits=q.shape[1], want_pr=want_pr)
    db_t = np.ascontiguousarray(db.T, dtype=np.float32)
    for sl in iter_query_blocks(q.shape[0], n_db, block_elements):
        acc.add(distances_block(q[sl], db_t, q.shape[1]), relevance_block(ql[sl], dbl))
    return acc, n_db


# ------------------------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of the items within Hamming radius r, for r = 0..K.

    Macro-averaged over queries. At a given radius, queries that retrieve nothing have an undefined
    precision and are left out of that radius's precision mean (NaN if no query retrieves anything);
    queries without any relevant database item are left out of the recall mean. Recall is therefore
    non-decreasing in r and reaches 1 at r = K.
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def to_dict(self) -> dict[str, list[Any]]:
        return {"radius": [int(r) for r in self.radius], "precision": _floats(self.precision),
                "recall": _floats(self.recall)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PRCurve:
        return cls(np.asarray(d["radius"], dtype=np.int64), _array(d["precision"]), _array(d["recall"]))


@dataclass(frozen=True)
class DirectionResult:
    """All metrics of one retrieval direction (e.g. ``i2t``: image queries, text database)."""

    name: str
    map_reference: float
    map_standard: float
    p_at_k: np.ndarray  # aligned with the report's ``ks``
    pr: PRCurve

    def to_dict(self) -> dict[str, Any]:
        return {"map_reference": _float(self.map_reference), "map_standard": _float(self.map_standard),
                "p_at_k": _floats(self.p_at_k), "pr": self.pr.to_dict()}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> DirectionResult:
        return cls(name, _unfloat(d["map_reference"]), _unfloat(d["map_standard"]), _array(d["p_at_k"]),
                   PRCurve.from_dict(d["pr"]))


@dataclass(frozen=True)
class RetrievalReport:
    """Metrics of every direction evaluated on one set of codes; ``to_dict()`` is JSON-ready."""

    k: int
    ks: tuple[int, ...]
    n_bits: int
    n_query: int
    n_database: int
    directions: dict[str, DirectionResult]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "ks": list(self.ks), "n_bits": self.n_bits, "n_query": self.n_query,
                "n_database": self.n_database,
                "directions": {name: r.to_dict() for name, r in self.directions.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrievalReport:
        return cls(int(d["k"]), tuple(int(x) for x in d["ks"]), int(d["n_bits"]), int(d["n_query"]),
                   int(d["n_database"]),
                   {name: DirectionResult.from_dict(name, r) for name, r in d["directions"].items()})

    def recall_at_k(self) -> dict[str, float]:
        """Flat ``{"i2t/recall@1": …}`` for instance relevance (datasets without classes, docs/datasets.md).

        Valid only when every query has exactly one relevant database item (its own caption or image): then the
        relevant items in the top k are 0 or 1, so recall@k = hits / 1 = P@k × min(k, database size).
        """
        out: dict[str, float] = {}
        for name, r in self.directions.items():
            for k, p in zip(self.ks, r.p_at_k, strict=True):
                out[f"{name}/recall@{k}"] = float(p) * min(k, self.n_database)
        return out

    def summary(self) -> dict[str, float]:
        """Flat ``{"i2t/map@20": …, "i2t/map@20_std": …}``, handy for logs and benchmark tables."""
        out: dict[str, float] = {}
        for name, r in self.directions.items():
            out[f"{name}/map@{self.k}"] = r.map_reference
            out[f"{name}/map@{self.k}_std"] = r.map_standard
        return out


def map_at_k(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
             k: int | None = None, definition: MapDefinition = "reference") -> float:
    """Mean average precision at ``k`` of a Hamming ranking (``k=None``: the whole database).

    ``definition="reference"`` reproduces DUCH's ``calc_map_k`` (AP over the first ``min(k, R)``
    relevant items of the full ranking, ``R`` = relevant items in the database; queries with
    ``R = 0`` count as 0). ``definition="standard"`` is AP@K over the top-``k`` list
    (``(1/n_k) Σ_{i≤k, rel_i} P@i``, 0 when nothing relevant is in the top k). See the module
    docstring for the exact formulas.
    """
    if definition not in ("reference", "standard"):
        raise ValueError(f"definition must be 'reference' or 'standard', got {definition!r}")
    acc, _ = _accumulate(q_codes, db_codes, q_labels, db_labels, k, (), want_pr=False)
    return acc.map(definition)


def precision_at_k_curve(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                         db_labels: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> np.ndarray:
    """Mean precision of the top-k list for each k in ``ks`` (``float64 [len(ks)]``).

    ``k`` larger than the database is clipped to the database size.
    """
    ks = tuple(ks)
    acc, n_db = _accumulate(q_codes, db_codes, q_labels, db_labels, max(ks, default=1), ks, want_pr=False)
    return acc.p_at_k(n_db)


def precision_recall_curve(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                           db_labels: np.ndarray) -> PRCurve:
    """Precision/recall of Hamming-radius retrieval for radii 0..K (macro over queries, see PRCurve)."""
    acc, _ = _accumulate(q_codes, db_codes, q_labels, db_labels, None, (), want_pr=True)
    return acc.pr_curve()


def direction_metrics(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                      db_labels: np.ndarray, k: int = 20, ks: Sequence[int] = DEFAULT_KS,
                      name: str = "", block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> DirectionResult:
    """Both mAP@k definitions, the P@K curve and the PR curve from a single ranking pass."""
    acc, n_db = _accumulate(q_codes, db_codes, q_labels, db_labels, k, ks, want_pr=True,
                            block_elements=block_elements)
    return DirectionResult(name=name, map_reference=acc.map("reference"), map_standard=acc.map("standard"),
                           p_at_k=acc.p_at_k(n_db), pr=acc.pr_curve())


def evaluate_retrieval(img_q: np.ndarray, txt_q: np.ndarray, img_db: np.ndarray, txt_db: np.ndarray,
                       q_labels: np.ndarray, db_labels: np.ndarray, k: int = 20,
                       ks: Sequence[int] = DEFAULT_KS,
                       directions: Sequence[str] = tuple(DIRECTIONS)) -> RetrievalReport:
    """Evaluate paired image/text codes in the four directions of the DUCH protocol.

    ``i2t``: image queries against the text database, ``t2i``: text queries against the image
    database, ``i2i`` and ``t2t`` within one modality. Query codes of both modalities share
    ``q_labels``; database codes share ``db_labels`` (one caption per image, as in the protocol).
    """
    codes = {"image": (img_q, img_db), "text": (txt_q, txt_db)}
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown directions {unknown}; choose from {list(DIRECTIONS)}")
    results: dict[str, DirectionResult] = {}
    for name in directions:
        q_mod, db_mod = DIRECTIONS[name]
        results[name] = direction_metrics(codes[q_mod][0], codes[db_mod][1], q_labels, db_labels,
                                          k=k, ks=ks, name=name)
    q0, db0 = check_code_pair(img_q, img_db)
    return RetrievalReport(k=int(k), ks=tuple(int(x) for x in ks), n_bits=q0.shape[1], n_query=q0.shape[0],
                           n_database=db0.shape[0], directions=results)


# ------------------------------------------------------------------------------------------ JSON helpers
def _float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _floats(a: np.ndarray) -> list[float | None]:
    return [_float(x) for x in np.asarray(a, dtype=np.float64)]


def _unfloat(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _array(values: Iterable[float | None]) -> np.ndarray:
    return np.array([_unfloat(v) for v in values], dtype=np.float64)
