"""Retrieval metrics for real-valued embeddings ranked by cosine similarity instead of Hamming distance.

Why: the reference rows "cosine on frozen features" and "cosine on the continuous (tanh) codes" show
what a hashing method loses by binarising. The mAP@K (reference and standard), P@K and PR numbers use
exactly the definitions of :mod:`tfduch.eval.metrics`; only the ranking differs. It is computed
block by block over queries with the same accumulator, by turning each query's cosine ranking into
integer rank positions (ties broken by database index, as for Hamming rankings). The PR curve
thresholds the cosine distance ``(1 - cos) / 2`` at ``pr_levels`` evenly spaced radii, the analogue
of the Hamming radii 0..K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfduch.codes import DEFAULT_BLOCK_ELEMENTS, iter_query_blocks
from tfduch.eval.metrics import (
    DEFAULT_KS,
    DIRECTIONS,
    DirectionResult,
    MapAccumulator,
    MapDefinition,
    RetrievalReport,
    check_label_kinds,
    check_labels,
    relevance_block,
)

__all__ = ["cosine_rank", "cosine_similarities", "direction_metrics_cosine", "evaluate_retrieval_cosine",
           "map_at_k_cosine"]


def _embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """L2-normalised float32 rows; a zero row stays zero (cosine 0 to everything)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name}: expected a [N, D] embedding matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: embeddings contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)


def _pair(q: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, db = _embeddings(q, "query embeddings"), _embeddings(db, "database embeddings")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query embeddings have {q.shape[1]} dimensions but database embeddings {db.shape[1]}: "
                         "cosine ranking needs both in one space")
    return q, db


def cosine_similarities(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """``float32 [Q, N]`` cosine similarities between query and database rows."""
    q, db = _pair(q, db)
    return q @ db.T


def _rank_positions(sim: np.ndarray) -> np.ndarray:
    """Per row, the 0-based rank of every column when sorted by decreasing similarity (ties: index)."""
    order = np.argsort(-sim, axis=1, kind="stable")
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(sim.shape[1])[None, :].repeat(sim.shape[0], 0), axis=1)
    return positions.astype(np.int32 if sim.shape[1] < 2**31 else np.int64)


def cosine_rank(q: np.ndarray, db: np.ndarray, topk: int | None = None) -> np.ndarray:
    """Database indices ``int64 [Q, N]`` (or ``[Q, topk]``) by decreasing cosine, ties by database index."""
    order = np.argsort(-cosine_similarities(q, db), axis=1, kind="stable")
    return order if topk is None else order[:, :topk]


def _accumulate_cosine(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                       k: int, ks: Sequence[int], pr_levels: int,
                       block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[MapAccumulator, MapAccumulator | None]:
    q, db = _pair(q, db)
    ql = check_labels(q_labels, q.shape[0], "query labels")
    dbl = check_labels(db_labels, db.shape[0], "database labels")
    check_label_kinds(ql, dbl)
    if db.shape[0] == 0:
        raise ValueError("the database is empty")
    if k < 1 or any(int(x) < 1 for x in ks):
        raise ValueError(f"k and every k in ks must be >= 1, got k={k}, ks={tuple(ks)}")
    ranking = MapAccumulator(k=int(k), ks=tuple(int(x) for x in ks), n_bits=0, want_pr=False)
    pr = MapAccumulator(k=int(k), ks=(), n_bits=int(pr_levels), want_pr=True) if pr_levels > 0 else None
    db_t = np.ascontiguousarray(db.T)
    for sl in iter_query_blocks(q.shape[0], db.shape[0], block_elements):
        sim = q[sl] @ db_t
        rel = relevance_block(ql[sl], dbl)
        ranking.add(_rank_positions(sim), rel)
        if pr is not None:
            # cosine distance in [0, 1] quantised to radii 0..pr_levels (ranking within a radius is irrelevant)
            radius = np.clip(np.ceil((1.0 - sim) * 0.5 * pr_levels - 1e-6), 0, pr_levels).astype(np.int32)
            pr._add_pr(radius, rel, rel.sum(axis=1))
    return ranking, pr


def map_at_k_cosine(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                    k: int | None = None, definition: MapDefinition = "reference") -> float:
    """mAP@k of a cosine ranking, with :func:`tfduch.eval.map_at_k`'s two definitions (``k=None``: all)."""
    if definition not in ("reference", "standard"):
        raise ValueError(f"definition must be 'reference' or 'standard', got {definition!r}")
    n_db = np.asarray(db).shape[0]
    ranking, _ = _accumulate_cosine(q, db, q_labels, db_labels, n_db if k is None else int(k), (), 0)
    return ranking.map(definition)


def direction_metrics_cosine(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                             k: int = 20, ks: Sequence[int] = DEFAULT_KS, name: str = "",
                             pr_levels: int = 64) -> DirectionResult:
    """Both mAP@k definitions, P@K and the cosine-radius PR curve of one direction."""
    ranking, pr = _accumulate_cosine(q, db, q_labels, db_labels, k, ks, pr_levels)
    curve = pr.pr_curve() if pr is not None else MapAccumulator(k=k, ks=(), n_bits=0, want_pr=True).pr_curve()
    return DirectionResult(name=name, map_reference=ranking.map("reference"), map_standard=ranking.map("standard"),
                           p_at_k=ranking.p_at_k(np.asarray(db).shape[0]), pr=curve)


def evaluate_retrieval_cosine(img_q: np.ndarray | None, txt_q: np.ndarray | None, img_db: np.ndarray | None,
                              txt_db: np.ndarray | None, q_labels: np.ndarray, db_labels: np.ndarray, k: int = 20,
                              ks: Sequence[int] = DEFAULT_KS, directions: Sequence[str] | None = None,
                              pr_levels: int = 64) -> RetrievalReport:
    """:func:`tfduch.eval.evaluate_retrieval` for real-valued embeddings ranked by cosine.

    Cross-modal directions need both modalities in one space (e.g. tanh codes); for frozen encoder
    features of different sizes pass ``directions=("i2i", "t2t")``. A modality given as ``None`` skips
    every direction that needs it. The report's ``n_bits`` holds the embedding dimension.
    """
    emb = {"image": (img_q, img_db), "text": (txt_q, txt_db)}
    wanted = list(DIRECTIONS) if directions is None else list(directions)
    unknown = [d for d in wanted if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown directions {unknown}; choose from {list(DIRECTIONS)}")
    results: dict[str, DirectionResult] = {}
    for name in wanted:
        q_mod, db_mod = DIRECTIONS[name]
        q, db = emb[q_mod][0], emb[db_mod][1]
        if q is None or db is None:
            if directions is not None:
                raise ValueError(f"direction {name!r} needs {q_mod} queries and a {db_mod} database")
            continue
        results[name] = direction_metrics_cosine(q, db, q_labels, db_labels, k=k, ks=ks, name=name,
                                                 pr_levels=pr_levels)
    if not results:
        raise ValueError("no direction could be evaluated: give at least one modality's queries and database")
    first_q = next(x for x in (img_q, txt_q) if x is not None)
    first_db = next(x for x in (img_db, txt_db) if x is not None)
    return RetrievalReport(k=int(k), ks=tuple(int(x) for x in ks), n_bits=int(np.asarray(first_q).shape[-1]),
                           n_query=int(np.asarray(first_q).shape[0]), n_database=int(np.asarray(first_db).shape[0]),
                           directions=results)
