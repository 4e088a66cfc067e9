"""Area and time pre-filter over tile footprints, and exact Hamming ranking of the filtered subset.

The filter is an STRtree (``shapely``) over the footprints' lon/lat bounding boxes: a query box finds its
candidates in O(log n + hits), then each candidate's footprint polygon is tested exactly (``shapely.
intersects``, vectorised). Ranking the survivors is a brute-force Hamming scan of just those rows, ties by
id, so a filtered search is exact: it equals ranking the filtered subset by brute force.

A filter for an index is cached beside it (``INDEX.geo.npz``, written atomically, keyed by the index's
checksum), so payloads are parsed once per index version, not per query.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.codes import hamming_distances_packed
from tfduch.errors import DataError
from tfduch.io import atomic_save_npz

__all__ = ["GeoFilter", "hamming_rank", "parse_bbox", "parse_time"]



def parse_bbox(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"minlon,minlat,maxlon,maxlat"`` → floats, checked (WGS84 degrees; no antimeridian crossing)."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise DataError(f"--bbox {text!r}: want four numbers minlon,minlat,maxlon,maxlat") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise DataError(f"--bbox {text!r}: want four numbers minlon,minlat,maxlon,maxlat")
    x0, y0, x1, y1 = values
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise DataError(f"--bbox {text!r}: need -180 <= minlon <= maxlon <= 180 and -90 <= minlat <= maxlat <= 90")
    return x0, y0, x1, y1


def _epoch(text: str) -> float:
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"--time: {text!r} is not an ISO 8601 date or date-time (e.g. 2024-05-01)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def parse_time(text: str) -> tuple[float, float]:
    """``"FROM/TO"`` (ISO 8601, either end ``..`` or empty = open; a bare date as TO means its whole day)."""
    start, sep, end = str(text).partition("/")
    if not sep:
        start = end = text
    lo = -math.inf if start.strip() in ("", "..") else _epoch(start)
    hi = math.inf
    if end.strip() not in ("", ".."):
        hi = _epoch(end) + (86400 - 1e-6 if len(end.strip()) == 10 else 0.0)
    if lo > hi:
        raise DataError(f"--time {text!r}: FROM is after TO")
    return lo, hi


def _time_of(value: Any) -> float:
    if not value:
        return math.nan
    try:
        return _epoch(str(value))
    except DataError:
        return math.nan


class GeoFilter:
    """Footprints (``[N, 5, 2]`` lon/lat) + acquisition times (epoch s, NaN = unknown) of items ``ids``."""

    def __init__(self, ids: np.ndarray, footprints: np.ndarray, times: np.ndarray | None = None) -> None:
        import shapely

        self.ids = np.asarray(ids, np.int64)
        self.footprints = np.asarray(footprints, np.float64)
        n = len(self.ids)
        if self.footprints.shape != (n, 5, 2):
            raise DataError(f"footprints must be [N, 5, 2] lon/lat rings, got {self.footprints.shape} for {n} ids")
        self.times = np.full(n, np.nan) if times is None else np.asarray(times, np.float64)
        self.lo, self.hi = self.footprints.min(axis=1), self.footprints.max(axis=1)
        self.tree = shapely.STRtree(shapely.box(self.lo[:, 0], self.lo[:, 1], self.hi[:, 0], self.hi[:, 1]))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_payloads(cls, ids: np.ndarray, payloads: Iterable[dict[str, Any]]) -> GeoFilter:
        """From index payloads (``footprint_wgs84``, ``datetime``); items without a footprint never match."""
        rings, times = [], []
        far = [[1e3, 1e3]] * 5  # outside every valid bbox: no footprint = never inside an area
        for p in payloads:
            rings.append(p.get("footprint_wgs84") or far)
            times.append(_time_of(p.get("datetime")))
        return cls(ids, np.asarray(rings, np.float64).reshape(-1, 5, 2), np.asarray(times, np.float64))

    def select(self, bbox: Sequence[float] | None = None, time: tuple[float, float] | None = None) -> np.ndarray:
        """Sorted ids of items whose footprint intersects ``bbox`` and whose time lies within ``time``."""
        import shapely

        if bbox is not None:
            query = shapely.box(*bbox)
            rows = np.sort(self.tree.query(query))
            # a footprint whose bounding box lies inside the query box intersects it: only the ones on the
            # box's border need the exact polygon test (against the prepared query box)
            inside = (self.lo[rows, 0] >= bbox[0]) & (self.lo[rows, 1] >= bbox[1]) & \
                     (self.hi[rows, 0] <= bbox[2]) & (self.hi[rows, 1] <= bbox[3])
            border = rows[~inside]
            if len(border):
                shapely.prepare(query)
                keep = inside.copy()
                keep[~inside] = shapely.intersects(query, shapely.polygons(self.footprints[border]))
                rows = rows[keep]
        else:
            rows = np.arange(len(self.ids))
        if time is not None:
            t = self.times[rows]
            rows = rows[(t >= time[0]) & (t <= time[1])]  # NaN (unknown time) compares False
        return self.ids[rows]

    # ------------------------------------------------------------------------------- cache beside an index
    def save(self, path: str | os.PathLike[str], key: str) -> None:
        atomic_save_npz(path, ids=self.ids, footprints=self.footprints, times=self.times, key=np.array(key))

    @classmethod
    def cached(cls, index_path: str | os.PathLike[str], key: str,
               source: Callable[[], tuple[np.ndarray, Iterable[dict[str, Any]]]]) -> GeoFilter:
        """Load ``INDEX.geo.npz`` when it belongs to this index version (``key``), else build and save it."""
        path = Path(str(index_path) + ".geo.npz")
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        return cls(z["ids"], z["footprints"], z["times"])
            except (OSError, ValueError, KeyError):
                pass  # stale or damaged: rebuild
        flt = cls.from_payloads(*source())
        try:
            flt.save(path, key)
        except OSError:
            pass  # a read-only index folder: filter still works, just not cached
        return flt


def hamming_rank(codes: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of packed ``queries [Q, B]`` among packed ``codes [n, B]``: ``(ids [Q, k'], dist [Q, k'])``.

    Ties are broken by id (``ids`` ascending), the order every exact index backend uses; ``k' = min(k, n)``.
    """
    codes = np.asarray(codes, np.uint8)
    ids = np.asarray(ids, np.int64)
    kk = min(int(k), len(ids))
    out_ids = np.zeros((len(queries), kk), np.int64)
    out_d = np.zeros((len(queries), kk), np.int32)
    order = np.argsort(ids, kind="stable")
    codes, ids = codes[order], ids[order]
    for qi, dist in enumerate(hamming_distances_packed(np.asarray(queries, np.uint8), codes)):
        top = np.lexsort((ids, dist))[:kk]
        out_ids[qi], out_d[qi] = ids[top], dist[top]
    return out_ids, out_d
