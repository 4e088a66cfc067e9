"""Search structures over packed binary codes, each trading recall, speed, memory and update cost.

Every backend answers the same question — the ``k`` codes nearest in Hamming distance to each query —
over one collection's packed codes ``uint8 [N, K/8]`` (:func:`tfduch.codes.pack_codes` order),
addressing rows by position. Results are sorted by ``(distance, position)``; positions increase with
item ids (see :mod:`tfduch.index.core`), so ties are broken by id, as in :mod:`tfduch.eval`.

* ``flat`` (default) — exact. faiss' heap scan (``hammings_knn_hc``) run in place on the stored, possibly
  memory-mapped codes, with exact (distance, id) tie-breaking at no extra cost (see "Exact ties");
  16 B per item (code + id). ``bench/search_speed.py`` compares it with ``IndexBinaryFlat``.
* ``mih`` — exact. Multi-index hashing (``IndexBinaryMultiHash``) with a scan fallback: 0.2× on random
  codes, ~1× on clustered codes; pays off only when most queries have k neighbours within a few bits
  (near-duplicate search). ~90 B per item.
* ``ivf`` — approximate (``nprobe`` of ``nlist`` cells, ``IndexBinaryIVF``): 12–14× on clustered codes at
  recall 1.0, useless on random codes (recall 0.35). ~40 B per item. Centroids are trained at build time.
* ``hnsw`` — approximate graph search (``IndexBinaryHNSW``): 4× at recall 0.94 on clustered codes, minutes
  to build a million, ~170 B per item, no native removal.

``bench/search_speed.py`` measures the numbers behind this table; ``docs/index.md`` reports them.

Exact ties. faiss' heap kernel keeps *a* set of k nearest codes; which of several codes at the k-th
distance it keeps is an implementation detail. Current faiss heaps order entries by (value, id) and the
scan visits positions in increasing order, so the kernel asked for exactly k already returns the exact
(distance, position) ranking; :func:`heap_ties_by_position` checks that on a small, heavily tied probe once
per process, and :func:`exact_topk` then takes this fast path (the default backend's scan costs what
``IndexBinaryFlat`` costs). Where the probe fails (another faiss), or rows are tombstoned, it asks for extra
candidates and proves the answer: if the last candidate is farther than the k-th, every code at the k-th
distance was seen and sorting the candidates by (distance, position) is the exact ranking; otherwise the
missing tie codes are filled in by a position-ordered scan that stops as soon as it has enough.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np

from tfduch.codes import hamming_distances_packed
from tfduch.index.errors import SearchError

__all__ = [
    "BACKENDS",
    "Backend",
    "FlatBackend",
    "HNSWBackend",
    "IVFBackend",
    "MultiHashBackend",
    "exact_topk",
    "heap_ties_by_position",
    "make_backend",
]

#: Extra candidates :func:`exact_topk` asks faiss for, beyond k and the removed rows. The heap scan
#: costs about the same for k = 20 and k = 100; 64 extra resolves the ties of random 64-bit codes in
#: 1M items in one pass (their 20th distance is ~16, with ~40 codes at distance <= 16).
TIE_MARGIN = 64
_SCAN_CHUNK = 1 << 16
FAR = (1 << 22) - 1  # distance of an empty result slot (beyond any code length)
_POS_BITS = 40  # (distance << 40 | position) sorts candidates in one int64 key
_NO_POS = (1 << _POS_BITS) - 1


def load_faiss() -> Any:
    import faiss

    return faiss


def _as_queries(queries: np.ndarray, n_bytes: int) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    if q.ndim != 2 or q.shape[1] != n_bytes:
        raise SearchError(f"packed query codes must be uint8 [Q, {n_bytes}], got shape {q.shape}")
    return q


def sort_candidates(dist: np.ndarray, pos: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, position) and keep ``width`` columns; empty slots (FAR, -1) go last."""
    key = (np.minimum(dist, FAR).astype(np.int64) << _POS_BITS) | np.where(pos < 0, _NO_POS, pos)
    key = np.sort(key, axis=1)[:, :width]
    pos = key & _NO_POS
    return (key >> _POS_BITS).astype(np.int32), np.where(pos == _NO_POS, -1, pos)


class _Heaps(threading.local):
    """Per-thread faiss result heaps: building one through SWIG costs more than a small search."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], tuple[Any, np.ndarray, np.ndarray]] = {}


_HEAPS = _Heaps()


def _knn_hc(db: np.ndarray, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss' heap kernel (``hammings_knn_hc``) over ``db`` in place: the kk nearest, by distance."""
    faiss = load_faiss()
    entry = _HEAPS.cache.get((q.shape[0], kk))
    if entry is None:
        if len(_HEAPS.cache) > 16:
            _HEAPS.cache.clear()
        dist, pos = np.empty((q.shape[0], kk), np.int32), np.empty((q.shape[0], kk), np.int64)
        heap = faiss.int_maxheap_array_t()
        heap.k, heap.nh, heap.ids, heap.val = kk, q.shape[0], faiss.swig_ptr(pos), faiss.swig_ptr(dist)
        entry = _HEAPS.cache[(q.shape[0], kk)] = (heap, dist, pos)
    heap, dist, pos = entry
    faiss.hammings_knn_hc(heap, faiss.swig_ptr(q), faiss.swig_ptr(db), db.shape[0], db.shape[1], 1)
    return dist, pos  # this thread's buffers: overwritten by its next call, so consume them first


_TIES_BY_POSITION: bool | None = None


def heap_ties_by_position() -> bool:
    """Whether faiss' heap kernel, asked for exactly k, returns the (distance, position) top-k.

    Probed once per process on codes with many exact ties (rows of a few distinct codes in shuffled
    order, several k): the fast path of :func:`exact_topk` is taken only where this faiss behaves so.
    """
    global _TIES_BY_POSITION
    if _TIES_BY_POSITION is None:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (4, 8), dtype=np.uint8)
        db = np.ascontiguousarray(base[rng.integers(0, 4, 3000)])
        q = np.ascontiguousarray(base[:3] ^ np.uint8(1))
        dist_all = hamming_distances_packed(q, db)
        ok = True
        for k in (1, 7, 64, 750, 2999):
            expect = np.lexsort((np.broadcast_to(np.arange(len(db)), dist_all.shape), dist_all), axis=1)[:, :k]
            dist, pos = _knn_hc(db, q, k)
            ok = ok and np.array_equal(pos, expect) and np.array_equal(dist, np.take_along_axis(dist_all, expect, 1))
        _TIES_BY_POSITION = bool(ok)
    return _TIES_BY_POSITION


def _fill_ties(codes: np.ndarray, query: np.ndarray, radius: int, need: int, removed: np.ndarray | None
               ) -> np.ndarray:
    """The ``need`` lowest live positions at exactly ``radius`` from ``query`` (scan in position order)."""
    found: list[np.ndarray] = []
    have = 0
    for start in range(0, codes.shape[0], _SCAN_CHUNK):
        chunk = codes[start : start + _SCAN_CHUNK]
        hit = np.flatnonzero(hamming_distances_packed(query[None], chunk)[0] == radius) + start
        if removed is not None:
            hit = hit[~removed[hit]]
        found.append(hit[: need - have])
        have += len(found[-1])
        if have >= need:
            break
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def exact_topk(codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None = None,
               margin: int = TIE_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ``(distances int32 [Q, k], positions int64 [Q, k])`` sorted by (distance, position).

    ``codes`` is read in place (a memory map is never copied); ``removed`` marks tombstoned rows, which
    are never returned. The caller guarantees ``1 <= k <= live rows``.
    """
    n = codes.shape[0]
    n_removed = int(removed.sum()) if removed is not None else 0
    q = _as_queries(queries, codes.shape[1])
    db = codes if codes.flags.c_contiguous and codes.dtype == np.uint8 else np.ascontiguousarray(codes, np.uint8)
    if not n_removed and heap_ties_by_position():
        dist, pos = _knn_hc(db, q, k)
        return dist.copy(), pos.copy()  # the kernel's buffers are reused by this thread's next call
    kk = min(n, k + n_removed + max(k, margin))
    dist, pos = _knn_hc(db, q, kk)
    if len(q) == 1 and not n_removed:
        # One query (interactive search): a Python sort of a few dozen pairs is cheaper than the numpy calls.
        d, p = dist[0].tolist(), pos[0].tolist()
        pairs = sorted(zip(d, p, strict=True))[:k]
        if kk == n or d[-1] > pairs[-1][0]:
            top = np.array(pairs, dtype=np.int64).T
            return top[:1].astype(np.int32), top[1:]
    seen_max = dist[:, -1]  # the kernel returns each row sorted by distance
    if n_removed:
        dead = removed[pos]
        dist, pos = np.where(dead, FAR, dist), np.where(dead, -1, pos)
        dist, pos = sort_candidates(dist, pos, k)
    else:  # the common case, kept to a few numpy calls: one sort of (distance << 40 | position) keys
        key = np.left_shift(dist, _POS_BITS, dtype=np.int64)
        key |= pos
        key.sort(axis=1)
        key = key[:, :k]
        dist, pos = np.right_shift(key, _POS_BITS).astype(np.int32), key & _NO_POS
    if kk < n:
        for i in np.flatnonzero(seen_max <= dist[:, -1]):
            # Not certified: another code at the k-th distance may exist outside the candidates.
            radius = int(dist[i, k - 1])
            keep = dist[i] < radius
            closer = pos[i][keep]
            ties = _fill_ties(db, q[i], radius, k - len(closer), removed)
            pos[i] = np.concatenate([closer, ties])
            dist[i] = np.concatenate([dist[i][keep], np.full(len(ties), radius, np.int32)])
    return dist, pos


class Backend:
    """A search structure over the rows of one collection's packed codes.

    Subclasses set ``name``, ``exact`` and ``supports_remove`` and implement :meth:`build`, :meth:`add`
    and :meth:`search`. Backends whose state is expensive to rebuild return it from :meth:`state`
    (stored in the index file) and take it back in :meth:`restore`.
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: True: rows can be deleted by compacting the code array (cheap); False: removal leaves tombstones
    #: that searches skip until :meth:`HammingIndex.compact` rebuilds the structure.
    supports_remove: ClassVar[bool] = False

    def __init__(self, bits: int) -> None:
        if bits < 8 or bits % 8:
            raise SearchError(f"code length must be a positive multiple of 8 bits, got {bits}")
        self.bits = int(bits)

    def build(self, codes: np.ndarray) -> None:
        """Index every row of ``codes`` (replacing anything indexed before)."""

    def add(self, new_codes: np.ndarray, codes: np.ndarray) -> None:
        """Index ``new_codes``, already appended at the end of ``codes``."""

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def state(self) -> np.ndarray | None:
        """Serialized structure to store in the index file, or ``None`` if :meth:`build` is cheap."""
        return None

    def restore(self, state: np.ndarray | None, codes: np.ndarray) -> None:
        """Load :meth:`state` (or rebuild from ``codes`` when there is none)."""
        self.build(codes)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits}



class FlatBackend(Backend):
    """Exact linear scan with faiss' heap kernel, straight over the (possibly memory-mapped) codes."""

    name = "flat"
    supports_remove = True

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk(codes, queries, k, removed)


class _FaissBackend(Backend):
    """Shared plumbing for backends that keep a faiss binary index of their own."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.index: Any = None

    def _new_index(self, codes: np.ndarray) -> Any:
        raise NotImplementedError

    def build(self, codes: np.ndarray) -> None:
        self.index = self._new_index(codes)
        if codes.shape[0]:
            self.index.add(np.ascontiguousarray(codes, np.uint8))

    def add(self, new_codes: np.ndarray, codes: np.ndarray) -> None:
        if self.index is None or not self.index.is_trained:
            self.build(codes)
        else:
            self.index.add(np.ascontiguousarray(new_codes, np.uint8))

    def state(self) -> np.ndarray | None:
        if self.index is None:
            return None
        return load_faiss().serialize_index_binary(self.index)

    def restore(self, state: np.ndarray | None, codes: np.ndarray) -> None:
        if state is None:
            self.build(codes)
            return
        self.index = load_faiss().deserialize_index_binary(np.ascontiguousarray(state, np.uint8))
        if self.index.ntotal != codes.shape[0]:
            from tfduch.index.errors import IndexFileError

            raise IndexFileError(f"{self.name} structure holds {self.index.ntotal} codes but the collection "
                                 f"has {codes.shape[0]}")


class MultiHashBackend(_FaissBackend):
    """Exact multi-index hashing: fast when the k nearest codes are close (clustered, learned codes).

    The code is cut into ``nhash`` substrings of ``bits / nhash`` bits, each a hash-table key. Probing
    every bucket within ``nflip`` bit flips of the query's substrings finds, by the pigeonhole
    principle, *every* code within ``r = nhash · (nflip + 1) − 1`` of the query. The search tries
    ``nflip = 0, 1, …, max_nflip``; as soon as at least k live codes lie within ``r`` the top k among them
    are exact. Queries whose k-th neighbour is farther fall back to the flat scan, so answers are always
    exact; only the speed depends on the data (random codes mostly fall back, learned codes rarely do).
    """

    name = "mih"

    def __init__(self, bits: int, nhash: int | None = None, max_nflip: int = 2) -> None:
        super().__init__(bits)
        self.nhash = int(nhash) if nhash is not None else max(1, bits // 16)
        if self.nhash < 1 or bits % self.nhash or bits // self.nhash > 63:
            raise SearchError(f"mih: nhash={self.nhash} must divide {bits} bits into substrings of <= 63 bits")
        self.max_nflip = int(max_nflip)
        if self.max_nflip < 0:
            raise SearchError(f"mih: max_nflip must be >= 0, got {max_nflip}")

    def _new_index(self, codes: np.ndarray) -> Any:
        return load_faiss().IndexBinaryMultiHash(self.bits, self.nhash, self.bits // self.nhash)

    def state(self) -> np.ndarray | None:
        return None  # hash tables rebuild in about a second per million codes

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, codes.shape[1])
        dist = np.full((q.shape[0], k), FAR, np.int32)
        pos = np.full((q.shape[0], k), -1, np.int64)
        pending = np.arange(q.shape[0])
        for nflip in range(self.max_nflip + 1):
            if not len(pending):
                break
            self.index.nflip = nflip
            radius = self.nhash * (nflip + 1) - 1  # every code within this distance is found
            lims, d, p = self.index.range_search(q[pending], radius + 1)
            solved = []
            for j, i in enumerate(pending):
                pi, di = p[lims[j] : lims[j + 1]], d[lims[j] : lims[j + 1]]
                if removed is not None and len(pi):
                    live = ~removed[pi]
                    pi, di = pi[live], di[live]
                if len(pi) >= k:
                    order = np.lexsort((pi, di))[:k]
                    dist[i], pos[i] = di[order], pi[order]
                    solved.append(j)
            pending = np.delete(pending, solved)
        if len(pending):
            dist[pending], pos[pending] = exact_topk(codes, q[pending], k, removed)
        return dist, pos

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "nhash": self.nhash, "max_nflip": self.max_nflip}



class HNSWBackend(_FaissBackend):
    """Approximate graph search (``IndexBinaryHNSW``): high recall at high speed, slow to build.

    Recall grows with ``ef_search`` (candidates kept during the walk) at the cost of speed; ``m`` (links
    per node) trades memory and build time for recall. Deleting rows leaves tombstones.
    """

    name = "hnsw"
    exact = False

    def __init__(self, bits: int, m: int = 16, ef_construction: int = 40, ef_search: int = 64) -> None:
        super().__init__(bits)
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)

    def _new_index(self, codes: np.ndarray) -> Any:
        index = load_faiss().IndexBinaryHNSW(self.bits, self.m)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return _approximate_search(self, codes, queries, k, removed,
                                   lambda kk: setattr(self.index.hnsw, "efSearch", max(self.ef_search, kk)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "m": self.m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search}



class IVFBackend(_FaissBackend):
    """Approximate inverted-file search over ``nlist`` binary k-means cells, probing ``nprobe`` of them.

    Speed is about ``nprobe / nlist`` of a scan; recall drops when a query's neighbours sit in cells it
    does not probe. The centroids are trained on the codes present at build time; later additions are
    assigned to those cells without retraining (rebuild after the archive changes a lot).
    """

    name = "ivf"
    exact = False

    def __init__(self, bits: int, nlist: int | None = None, nprobe: int = 8) -> None:
        super().__init__(bits)
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)

    def _cells(self, n: int) -> int:
        if self.nlist is not None:
            return max(1, min(self.nlist, n))
        return max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39 or 1))  # faiss wants ~39 codes per cell

    def _new_index(self, codes: np.ndarray) -> Any:
        faiss = load_faiss()
        quantizer = faiss.IndexBinaryFlat(self.bits)
        index = faiss.IndexBinaryIVF(quantizer, self.bits, self._cells(codes.shape[0]))
        self._quantizer = quantizer  # faiss does not own it; keep it alive as long as the index
        if codes.shape[0]:
            index.train(np.ascontiguousarray(codes, np.uint8))
        return index

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int, removed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return _approximate_search(self, codes, queries, k, removed,
                                   lambda kk: setattr(self.index, "nprobe", min(self.nprobe, self.index.nlist)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "nlist": self.nlist, "nprobe": self.nprobe}



def _approximate_search(backend: _FaissBackend, codes: np.ndarray, queries: np.ndarray, k: int,
                        removed: np.ndarray | None, configure: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ask for k + removed + a margin candidates, drop tombstones, order by (distance, position)."""
    q = _as_queries(queries, codes.shape[1])
    n_removed = int(removed.sum()) if removed is not None else 0
    kk = min(codes.shape[0], k + n_removed + max(k, 16))
    configure(kk)
    dist, pos = backend.index.search(q, kk)
    if len(q) == 1 and not n_removed:  # one query: sorting a few dozen pairs in Python is cheaper
        pairs = sorted(pair for pair in zip(dist[0].tolist(), pos[0].tolist(), strict=True) if pair[1] >= 0)[:k]
        top = np.array(pairs + [(FAR, -1)] * (k - len(pairs)), dtype=np.int64).T
        return top[:1].astype(np.int32), top[1:]
    if n_removed:
        dead = (pos >= 0) & removed[np.maximum(pos, 0)]
        dist, pos = np.where(dead, FAR, dist), np.where(dead, -1, pos)
    return sort_candidates(dist, pos, k)


#: Backend name → class. ``make_backend`` builds one from a name and keyword parameters.
BACKENDS: dict[str, type[Backend]] = {
    "flat": FlatBackend,
    "mih": MultiHashBackend,
    "hnsw": HNSWBackend,
    "ivf": IVFBackend,
}


def make_backend(name: str, bits: int, **params: Any) -> Backend:
    """A backend by name (``flat``, ``mih``, ``hnsw``, ``ivf``) with its parameters."""
    cls = BACKENDS.get(name)
    if cls is None:
        raise SearchError(f"unknown index backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    try:
        return cls(bits, **params)
    except TypeError as exc:
        raise SearchError(f"bad parameters for backend {name!r}: {exc}") from None


def backend_from_config(config: dict[str, Any]) -> Backend:
    params = {k: v for k, v in config.items() if k not in ("name", "bits")}
    return make_backend(config["name"], int(config["bits"]), **params)
