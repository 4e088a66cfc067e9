"""Search restricted to an area and/or a time range (geo archives): the hook between the index and tfduch.geo.

The filter is a :class:`tfduch.geo.spatial.GeoFilter` (an STRtree over the tiles' WGS84 footprints), built
once per index version from the payloads and cached beside the index file (``INDEX.geo.npz``); the items
that pass are ranked by brute-force Hamming distance with ties by id, so the answer equals ranking the
filtered subset exhaustively.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfduch.errors import TfduchError
from tfduch.index.core import Hit, as_packed, hits_from

__all__ = ["area_search", "has_footprints"]


def has_footprints(index: Any) -> bool:
    """Whether the index's first image item carries a WGS84 footprint (a geo archive)."""
    coll = index.collection("image")
    return len(coll) > 0 and "footprint_wgs84" in coll.payloads_of(coll.ids[:1])[0]


def area_search(index: Any, index_path: str | os.PathLike[str], codes: np.ndarray, k: int,
                bbox: tuple[float, float, float, float] | None = None,
                time: tuple[float, float] | None = None) -> list[list[Hit]]:
    """Top-``k`` image items per query among those whose footprint meets ``bbox`` and time is within ``time``."""
    from tfduch.geo import require
    from tfduch.geo.spatial import GeoFilter, hamming_rank
    from tfduch.index.sharded import is_shard_set

    require()
    if is_shard_set(index_path):
        raise TfduchError(f"{index_path} is a shard set: an area / time filter needs a single index file for now")
    coll = index.collection("image")
    live = coll.ids if coll.removed is None else coll.ids[~coll.removed]
    flt = GeoFilter.cached(index_path, f"{index.metadata.get('checksum', '')}:{len(live)}",
                           lambda: (live, coll.payloads_of(live)))
    ids = flt.select(bbox, time)
    if len(ids) == 0:
        return [[] for _ in range(len(codes))]
    top, dist = hamming_rank(coll.codes[coll.positions(ids)], ids, as_packed(codes, index.bits, "query codes"), k)
    return hits_from(top, dist, coll.payloads_of)
