"""Hamming distances and rankings between binary codes.

Every metric in :mod:`tfduch.eval.metrics` and every retrieval path ranks a database by Hamming
distance, so this module fixes the two things that must agree everywhere:

* **what a code is**: ``int8`` ±1 of shape ``[N, K]`` (see :func:`as_pm1_codes` for the accepted
  alternatives and how they are converted), and
* **how ties are broken**: items at equal distance are ordered by database index (a stable sort).
  PyTorch's ``torch.sort`` used by the DUCH reference code leaves ties in an unspecified order, so
  its numbers can move by a few 1e-3 between runs; ours are reproducible bit for bit.

Distances are computed with one float32 matrix product per block of queries,
``d = (K - q @ db.T) / 2``, which is exact for ``K < 2**24`` and uses BLAS. Packed codes
(8 bits a byte, :func:`pack_codes`) are the compact storage format for large databases;
:func:`hamming_distances_packed` ranks them with a popcount and gives the same distances.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "as_pm1_codes",
    "hamming_distances",
    "hamming_distances_packed",
    "hamming_rank",
    "iter_query_blocks",
    "pack_codes",
    "unpack_codes",
]

# Elements of a [queries, database] block processed at once: 2**22 int32 distances are 16 MiB, and the
# rank / relevance temporaries derived from one block stay well under 200 MiB.
DEFAULT_BLOCK_ELEMENTS = 1 << 22

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def as_pm1_codes(codes: np.ndarray, name: str = "codes") -> np.ndarray:
    """Return ``codes`` as a C-contiguous ``int8`` ±1 array ``[N, K]``.

    Conversion rule (so that models' raw outputs and bit arrays can be passed directly):

    * an array whose values all lie in ``{0, 1}`` (bool, uint8 bits, float 0/1) is read as bits:
      ``1 → +1``, ``0 → -1``;
    * any other array (±1 codes, tanh outputs, logits) is binarised by sign, with ``0 → +1``.

    A 1-D array is treated as a single code ``[1, K]``.
    """
    arr = np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [N, K] array of codes, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: codes have zero bits (shape {arr.shape})")
    if arr.dtype == np.int8 and arr.size and np.all(np.abs(arr) == 1):
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.where(arr, 1, -1).astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: codes must be numeric or bool, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: codes contain NaN or infinite values")
    if arr.size and np.all((arr == 0) | (arr == 1)):
        return np.where(arr == 1, 1, -1).astype(np.int8)
    return np.where(arr >= 0, 1, -1).astype(np.int8)


def _check_pair(q: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = as_pm1_codes(q, "query codes")
    db = as_pm1_codes(db, "database codes")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bits but database codes have {db.shape[1]}")
    if q.shape[1] >= 1 << 24:
        raise ValueError("codes longer than 2**24 bits cannot be compared exactly in float32")
    return q, db


def iter_query_blocks(n_query: int, n_database: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                      ) -> Iterator[slice]:
    """Yield slices of query rows such that one block holds about ``block_elements`` pairs.

    Used to bound memory: a 10k × 100k evaluation is processed a few dozen queries at a time.
    """
    step = max(1, int(block_elements) // max(1, n_database))
    for start in range(0, n_query, step):
        yield slice(start, min(n_query, start + step))


def _distances_block(q_block: np.ndarray, db_f32_t: np.ndarray, n_bits: int) -> np.ndarray:
    dots = q_block.astype(np.float32) @ db_f32_t
    # (K - dot) is even and |dot| <= K, so the result is an exact integer in float32.
    return ((n_bits - dots) * 0.5).astype(np.int32)


def hamming_distances(q: np.ndarray, db: np.ndarray, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                      ) -> np.ndarray:
    """Hamming distances ``int32 [Q, N]`` between query codes ``[Q, K]`` and database codes ``[N, K]``.

    Computed block by block (``block_elements`` query×database pairs at a time) so that the float32
    temporaries stay small; only the int32 result is ``Q × N``.
    """
    q, db = _check_pair(q, db)
    n_bits = q.shape[1]
    db_t = np.ascontiguousarray(db.T, dtype=np.float32)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    for sl in iter_query_blocks(q.shape[0], db.shape[0], block_elements):
        out[sl] = _distances_block(q[sl], db_t, n_bits)
    return out


def _rank_block(dist: np.ndarray, topk: int | None) -> np.ndarray:
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
    q, db = _check_pair(q, db)
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
        out[sl] = _rank_block(_distances_block(q[sl], db_t, n_bits), topk)
    return out


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack ±1 codes ``[N, K]`` into bits ``uint8 [N, ceil(K / 8)]`` (+1 → bit 1, big-endian in a byte).

    Eight times smaller than int8 codes: the storage format for large databases and indexes.
    Padding bits of the last byte are 0 for every code, so they never add to a distance.
    """
    pm1 = as_pm1_codes(codes)
    return np.packbits(pm1 > 0, axis=1)


def unpack_codes(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint8 [N, ceil(K / 8)]`` → ``int8`` ±1 ``[N, n_bits]``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed codes must be a uint8 [N, B] array, got {packed.dtype} {packed.shape}")
    if not 0 < n_bits <= packed.shape[1] * 8:
        raise ValueError(f"n_bits={n_bits} does not fit in {packed.shape[1]} bytes")
    bits = np.unpackbits(packed, axis=1, count=n_bits)
    return np.where(bits == 1, 1, -1).astype(np.int8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, x.itemsize).sum(axis=-1, dtype=np.uint8)


def hamming_distances_packed(q_packed: np.ndarray, db_packed: np.ndarray,
                             block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> np.ndarray:
    """Hamming distances ``int32 [Q, N]`` between packed codes (XOR + popcount).

    Gives the same numbers as :func:`hamming_distances` on the unpacked codes.
    """
    qp = np.ascontiguousarray(q_packed, dtype=np.uint8)
    dbp = np.ascontiguousarray(db_packed, dtype=np.uint8)
    if qp.ndim != 2 or dbp.ndim != 2 or qp.shape[1] != dbp.shape[1]:
        raise ValueError(f"packed codes must be [Q, B] and [N, B] uint8 arrays, "
                         f"got {qp.shape} and {dbp.shape}")
    n_bytes = qp.shape[1]
    if n_bytes % 8 == 0:  # compare 64 bits at a time
        qp, dbp = qp.view(np.uint64), dbp.view(np.uint64)
    out = np.empty((qp.shape[0], dbp.shape[0]), dtype=np.int32)
    per_query = dbp.shape[0] * qp.shape[1]
    step = max(1, int(block_elements) // max(1, per_query))
    for start in range(0, qp.shape[0], step):
        sl = slice(start, min(qp.shape[0], start + step))
        xor = qp[sl, None, :] ^ dbp[None, :, :]
        out[sl] = _popcount(xor).sum(axis=-1, dtype=np.int32)
    return out
