"""One searchable collection of binary codes: packed codes, ids, payloads and a search backend.

Ids are assigned by the collection, increase with insertion order and are never reused, so a row's
position and its id sort the same way: the backends' (distance, position) order *is* the
(distance, id) order that :mod:`tfduch.eval` uses to break ties. Adding appends rows; removing either
compacts the rows at once (``flat``: the codes are the whole structure) or leaves tombstones that
searches skip until :meth:`HammingIndex.compact` rebuilds the structure (graph / hash / IVF backends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfduch.codes import as_pm1_codes, pack_codes
from tfduch.index.backends import Backend, make_backend
from tfduch.index.errors import SearchError
from tfduch.index.payload import PayloadStore

__all__ = ["Hit", "HammingIndex", "as_packed", "check_k", "hits_from"]


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based rank, item id, Hamming distance and the item's payload."""

    rank: int
    id: int
    distance: int
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "distance": self.distance, **self.payload}


def check_k(k: int, n: int) -> int:
    """Validate ``k`` against a collection of ``n`` live items (one message for every kind of index)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise SearchError(f"k must be an integer, got {k!r}")
    if n == 0:
        raise SearchError("the collection is empty: add items before searching")
    if k < 1:
        raise SearchError(f"k must be >= 1, got {k}")
    if k > n:
        raise SearchError(f"k={k} is larger than the collection ({n} items); ask for k <= {n}")
    return int(k)


def hits_from(ids: np.ndarray, dist: np.ndarray, payloads_of: Callable[[np.ndarray], list[dict[str, Any]]]
              ) -> list[list[Hit]]:
    """One list of :class:`Hit` per query row of ``(ids, dist)``; id -1 (an empty slot) is dropped."""
    out = []
    for row_ids, row_dist in zip(ids, dist, strict=True):
        valid = row_ids >= 0
        payloads = payloads_of(row_ids[valid])
        out.append([Hit(rank=r + 1, id=int(i), distance=int(d), payload=p)
                    for r, (i, d, p) in enumerate(zip(row_ids[valid], row_dist[valid], payloads, strict=True))])
    return out


def as_packed(codes: np.ndarray, bits: int, name: str = "codes") -> np.ndarray:
    """``uint8 [N, bits/8]`` packed codes from ±1 / 0-1 / tanh codes ``[N, bits]`` or already packed codes.

    A ``uint8`` array of width ``bits / 8`` is taken as packed; anything of width ``bits`` is binarised
    with :func:`tfduch.codes.as_pm1_codes` and packed big-endian (the export's ``packed`` order).
    """
    arr = np.asarray(codes)
    if arr.dtype == np.uint8 and arr.ndim == 2 and arr.shape[1] == bits // 8:
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # packed: the fast path
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise SearchError(f"{name}: expected a [N, {bits}] code array, got shape {arr.shape}")
    if arr.dtype == np.uint8 and arr.shape[1] == bits // 8:
        return np.ascontiguousarray(arr)
    if arr.shape[1] != bits:
        raise SearchError(f"{name}: codes have {arr.shape[1]} columns but the index holds {bits}-bit codes "
                          f"(or {bits // 8} packed bytes)")
    try:
        return pack_codes(as_pm1_codes(arr, name))
    except ValueError as exc:
        raise SearchError(str(exc)) from None


class HammingIndex:
    """A collection of ``bits``-bit codes searchable by Hamming distance with deterministic ties.

    ``codes`` may be a read-only memory map (see :func:`tfduch.index.store.load_index`); adding or
    removing rows makes an in-memory copy.
    """

    def __init__(self, bits: int, backend: str | Backend = "flat", *, codes: np.ndarray | None = None,
                 ids: np.ndarray | None = None, payloads: PayloadStore | None = None,
                 removed: np.ndarray | None = None, next_id: int | None = None,
                 backend_state: np.ndarray | None = None, **backend_params: Any) -> None:
        self.backend = backend if isinstance(backend, Backend) else make_backend(backend, bits, **backend_params)
        self.bits = self.backend.bits
        nbytes = self.bits // 8
        self.codes = np.zeros((0, nbytes), np.uint8) if codes is None else codes
        self.ids = np.zeros(0, np.int64) if ids is None else ids
        self.payloads = PayloadStore() if payloads is None else payloads
        n = self.codes.shape[0]
        if self.codes.shape != (n, nbytes) or self.ids.shape != (n,) or len(self.payloads) != n:
            raise SearchError(f"inconsistent collection: codes {self.codes.shape}, ids {self.ids.shape}, "
                              f"{len(self.payloads)} payloads for {self.bits}-bit codes")
        if n and np.any(np.diff(self.ids) <= 0):
            raise SearchError("collection ids must be strictly increasing")
        self.removed = np.array(removed, bool) if removed is not None and removed.any() else None
        self.next_id = int(self.ids[-1]) + 1 if next_id is None and n else int(next_id or 0)
        self.backend.restore(backend_state, self.codes)

    # ----------------------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        """Live items (tombstoned rows excluded)."""
        return self.codes.shape[0] - self.num_removed

    @property
    def num_removed(self) -> int:
        return 0 if self.removed is None else int(self.removed.sum())

    # ---------------------------------------------------------------------------------------- updates
    def add(self, codes: np.ndarray, payloads: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        """Append codes (±1 ``[N, bits]`` or packed) with optional payloads; returns their new ids."""
        packed = as_packed(codes, self.bits)
        n_new = packed.shape[0]
        if payloads is not None and len(payloads) != n_new:
            raise SearchError(f"{len(payloads)} payloads for {n_new} codes")
        new_ids = np.arange(self.next_id, self.next_id + n_new, dtype=np.int64)
        self.codes = np.concatenate([self.codes, packed])
        self.ids = np.concatenate([self.ids, new_ids])
        self.payloads.extend(payloads if payloads is not None else [None] * n_new)
        if self.removed is not None:
            self.removed = np.concatenate([self.removed, np.zeros(n_new, bool)])
        self.next_id += n_new
        self.backend.add(packed, self.codes)
        return new_ids

    def positions(self, ids: Iterable[int]) -> np.ndarray:
        """Row positions of live ``ids``; a :class:`SearchError` lists ids that are not in the collection."""
        wanted = np.unique(np.asarray(list(ids), dtype=np.int64))
        pos = np.searchsorted(self.ids, wanted)
        ok = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == wanted) if len(self.ids) \
            else np.zeros(len(wanted), bool)
        if self.removed is not None:
            ok &= ~self.removed[np.minimum(pos, len(self.ids) - 1)]
        if not ok.all():
            missing = wanted[~ok]
            shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise SearchError(f"{len(missing)} id(s) not in the collection: {shown}")
        return pos

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id (all or nothing); returns how many were removed."""
        pos = self.positions(ids)
        if self.removed is None:
            self.removed = np.zeros(self.codes.shape[0], bool)
        self.removed[pos] = True
        if self.backend.supports_remove:
            self.compact()
        return len(pos)

    def compact(self) -> None:
        """Drop tombstoned rows and rebuild the backend over the remaining codes."""
        if self.removed is None:
            return
        keep = np.flatnonzero(~self.removed)
        self.codes = np.ascontiguousarray(self.codes[keep])
        self.ids = self.ids[keep]
        self.payloads = self.payloads.take(keep)
        self.removed = None
        self.backend.build(self.codes)

    # ----------------------------------------------------------------------------------------- search
    def check_k(self, k: int) -> int:
        """Validate ``k`` against the collection; a :class:`SearchError` says what is wrong."""
        return check_k(k, len(self))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [Q, k], distances int32 [Q, k])`` of the k nearest items, ties by id.

        Approximate backends may return fewer than k items for a query; missing slots hold id -1.
        """
        k = self.check_k(k)
        q = as_packed(queries, self.bits, "query codes")
        dist, pos = self.backend.search(self.codes, q, k, self.removed)
        n = len(self.ids)
        if n and self.ids[-1] == n - 1:  # ids 0..n-1 (nothing ever removed): ids are positions
            return pos, dist
        if self.backend.exact:  # exact backends always fill k slots
            return self.ids[pos], dist
        return np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1), dist

    def search_hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Like :meth:`search`, with each result's payload (one list of :class:`Hit` per query)."""
        ids, dist = self.search(queries, k)
        return hits_from(ids, dist, self.payloads_of)

    def payloads_of(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Payloads of ids a search returned (live ids of this collection, not re-validated)."""
        return [self.payloads[int(p)] for p in np.searchsorted(self.ids, ids)]

    def payload(self, item_id: int) -> dict[str, Any]:
        return self.payloads[int(self.positions([item_id])[0])]

    def code(self, item_id: int) -> np.ndarray:
        """The packed code ``uint8 [bits/8]`` of one item."""
        return np.array(self.codes[int(self.positions([item_id])[0])])

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "backend": self.backend.get_config(), "count": len(self),
                "removed": self.num_removed, "next_id": self.next_id}
