"""Binary codes: the one place that says what a code is, how it is signed, packed and compared.

Every package that handles codes (evaluation, export, archive shards, index, serving) uses these
functions, so the conventions below cannot drift apart:

* **a code** is ``int8`` ±1 of shape ``[N, K]``; :func:`as_pm1_codes` lists the accepted alternatives;
* **sign**: ``x >= 0 → +1``, ``x < 0 → -1`` (so ``sign(0) = +1`` and a code is always ±1);
* **packing** (the only bit order): bit ``j`` is 1 where code ``j`` is +1, 8 bits a byte, big-endian
  within a byte (``numpy.packbits`` order), ``uint8 [N, ceil(K / 8)]``; padding bits of the last byte
  are 0 for every code so they never add to a distance;
* **Hamming distance** between ±1 codes is ``(K - q·d) / 2`` (one float32 matrix product per block,
  exact for ``K < 2**24``), and between packed codes XOR + popcount: both give the same numbers.

The TensorFlow versions (:func:`tf_sign`, :func:`tf_pack`) build the same codes inside a graph (the
SavedModel / TFLite export); they import TensorFlow only when called.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "PACKING",
    "as_pm1_codes",
    "check_code_pair",
    "hamming_distances",
    "hamming_distances_packed",
    "iter_query_blocks",
    "pack_codes",
    "packed_hex",
    "sign",
    "tf_pack",
    "tf_sign",
    "unpack_codes",
]

# Human-readable statement of the packing, written into export metadata and docs.
PACKING = "bit j = 1 where code j is +1; 8 bits per byte, big-endian (numpy.packbits order)"

# Elements of a [queries, database] block processed at once: 2**22 int32 distances are 16 MiB, and the
# rank / relevance temporaries derived from one block stay well under 200 MiB.
DEFAULT_BLOCK_ELEMENTS = 1 << 22

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def sign(x: Any) -> np.ndarray:
    """``int8`` ±1 codes: ``+1`` where ``x >= 0`` (so 0 maps to +1), ``-1`` elsewhere."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int8)


def as_pm1_codes(codes: Any, name: str = "codes") -> np.ndarray:
    """Return ``codes`` as a C-contiguous ``int8`` ±1 array ``[N, K]``.

    Conversion rule (so that models' raw outputs and bit arrays can be passed directly):

    * an array whose values all lie in ``{0, 1}`` (bool, uint8 bits, float 0/1) is read as bits:
      ``1 → +1``, ``0 → -1``;
    * any other array (±1 codes, tanh outputs, logits) is binarised by :func:`sign`, with ``0 → +1``.

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
    return sign(arr)


def check_code_pair(q: Any, db: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both arguments as ±1 codes of the same length (a clear error otherwise)."""
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


def distances_block(q_block: np.ndarray, db_f32_t: np.ndarray, n_bits: int) -> np.ndarray:
    """Hamming distances of a block of ±1 queries to a transposed float32 database ``[K, N]``."""
    dots = q_block.astype(np.float32) @ db_f32_t
    # (K - dot) is even and |dot| <= K, so the result is an exact integer in float32.
    return ((n_bits - dots) * 0.5).astype(np.int32)


def hamming_distances(q: Any, db: Any, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> np.ndarray:
    """Hamming distances ``int32 [Q, N]`` between query codes ``[Q, K]`` and database codes ``[N, K]``.

    Computed block by block (``block_elements`` query×database pairs at a time) so that the float32
    temporaries stay small; only the int32 result is ``Q × N``.
    """
    q, db = check_code_pair(q, db)
    n_bits = q.shape[1]
    db_t = np.ascontiguousarray(db.T, dtype=np.float32)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    for sl in iter_query_blocks(q.shape[0], db.shape[0], block_elements):
        out[sl] = distances_block(q[sl], db_t, n_bits)
    return out


def pack_codes(codes: Any) -> np.ndarray:
    """Pack codes ``[N, K]`` into bits ``uint8 [N, ceil(K / 8)]`` in the one :data:`PACKING` order.

    Eight times smaller than int8 codes: the storage format for large databases, indexes and shards.
    """
    return np.packbits(as_pm1_codes(codes) > 0, axis=1)


def unpack_codes(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint8 [N, ceil(K / 8)]`` → ``int8`` ±1 ``[N, n_bits]``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed codes must be a uint8 [N, B] array, got {packed.dtype} {packed.shape}")
    if not 0 < n_bits <= packed.shape[1] * 8:
        raise ValueError(f"n_bits={n_bits} does not fit in {packed.shape[1]} bytes")
    bits = np.unpackbits(packed, axis=1, count=n_bits)
    return np.where(bits == 1, 1, -1).astype(np.int8)


def packed_hex(codes: Any) -> list[str]:
    """One hexadecimal string per code (its packed bytes), the text form the CLIs print and accept."""
    return [row.tobytes().hex() for row in pack_codes(codes)]


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned integer array (``np.bitwise_count`` where numpy has it)."""
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
        out[sl] = popcount(xor).sum(axis=-1, dtype=np.int32)
    return out


def tf_sign(h: Any) -> Any:
    """In-graph :func:`sign`: int8 ±1 codes from a float tensor, 0 → +1."""
    import tensorflow as tf

    return tf.where(h >= 0, tf.constant(1, tf.int8), tf.constant(-1, tf.int8))


def tf_pack(codes: Any) -> Any:
    """In-graph :func:`pack_codes` for ±1 codes ``[B, K]`` with ``K`` a multiple of 8 → ``uint8 [B, K/8]``."""
    import tensorflow as tf

    bits = int(codes.shape[-1])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    on = tf.reshape(tf.cast(codes > 0, tf.int32), [-1, bits // 8, 8])
    return tf.cast(tf.reduce_sum(on * weights, axis=-1), tf.uint8)
