"""Hamming rankings between binary codes.

What a code is, how it is signed and packed and how distances are computed lives in
:mod:`tfduch.codes` (re-exported here for the evaluation API). This module fixes how **ties are
broken**: items at equal distance are ordered by database index (a stable sort). PyTorch's
``torch.sort`` used by the DUCH reference code leaves ties in an unspecified order, so its numbers can
move by a few 1e-3 between runs; ours are reproducible bit for bit.
"""

from __future__ import annotations

import numpy as np

from tfduch.codes import (
    DEFAULT_BLOCK_ELEMENTS,
    as_pm1_codes,
    check_code_pair,
    distances_block,
    hamming_distances,
    hamming_distances_packed,
    iter_query_blocks,
    pack_codes,
    unpack_codes,
)

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "as_pm1_codes",
    "hamming_distances",
    "hamming_distances_packed",
    "hamming_rank",
    "iter_query_blocks",
    "pack_codes",
    "rank_block",
    "unpack_codes",
]


def rank_block(dist: np.ndarray, topk: int | None) -> np.ndarray:
    """Rank the rows of a distance block, ties by column index; ``topk`` keeps the first columns."""
    n = dist.shape[1]
    if topk is None or topk >= n:
        # Distances fit in uint16 for any practical K; numpy's stable sort is a radix sort there.
        key = dist.astype(np.uint16) if dist.size and dist.max() < 1 << 16 else dist
        return np.argsort(key, axis=1, kind="stable").astype(np.int64, copy=False)
    # A unique composite key (distance, index) makes argpartition's choice deterministic.
    key = dist.astype(np.int64) * n + np.arange(n, dtype=np.int64)
    part = np.argpartition(key, topk - 1, axis=1)[:, :topk]
    part_keys = np.take_along_axis(key, part, axis=1)
    order = np.argsort(part_keys, axis=1)
    return np.take_along_axis(part, order, axis=1)


def hamming_rank(q: np.ndarray, db: np.ndarray, topk: int | None = None,
                 block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> np.ndarray:
    """Database indices ``int64 [Q, N]`` (or ``[Q, topk]``) sorted by Hamming distance to each query.

    Ties are broken by database index (lowest first), so the ranking is deterministic and equal to
    ``np.lexsort((np.arange(N), dist))`` row by row. With ``topk`` only the first ``topk`` items are
    kept (found with a partition, without sorting the whole row), which bounds memory for large
    databases.
    """
    q, db = check_code_pair(q, db)
    n_db = db.shape[0]
    if topk is not None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        topk = min(int(topk), n_db)
    width = n_db if topk is None else topk
    n_bits = q.shape[1]
    db_t = np.ascontiguousarray(db.T, dtype=np.float32)
    out = np.empty((q.shape[0], width), dtype=np.int64)
    for sl in iter_query_blocks(q.shape[0], n_db, block_elements):
        out[sl] = rank_block(distances_block(q[sl], db_t, n_bits), topk)
    return out
