"""Area filter on 1M synthetic tiles: exact vs brute force, and query latency with a 1 % area vs no filter.

    python bench/geo_filter.py [--n 1000000] [--bits 64] [--area 0.01] [--queries 50] [--k 20]

Tiles: a 1000 x 1000 grid of 0.001° footprints (slightly rotated quadrilaterals, as UTM tiles are in lon/lat)
with random 64-bit codes. For each query a random box covering ``--area`` of the extent is drawn; the
filtered search (:class:`tfduch.geo.spatial.GeoFilter` STRtree + exact polygon test, then
:func:`~tfduch.geo.spatial.hamming_rank` of the survivors) is checked against brute force (every footprint
tested with shapely, every surviving code's distance with numpy, sorted by (distance, id)), then timed
against an unfiltered exact search of all tiles (the index's flat backend, :class:`tfduch.index.core.
HammingIndex`), interleaved query by query. Prints medians and their ratio; the machine is shared, so the
ratio (measured in one run) is what to compare.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import shapely

from tfduch.geo.spatial import GeoFilter, hamming_rank
from tfduch.index.core import HammingIndex


def tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    side = int(round(n ** 0.5))
    rng = np.random.default_rng(seed)
    ii, jj = np.divmod(np.arange(side * side), side)
    x0, y0 = -81.0 + jj * 1e-3, 36.0 + ii * 1e-3
    skew = 2e-5  # a little rotation, like a UTM tile seen in lon/lat
    ring = np.stack([np.stack([x0, y0], 1), np.stack([x0 + 1e-3, y0 + skew], 1),
                     np.stack([x0 + 1e-3 - skew, y0 + 1e-3 + skew], 1), np.stack([x0 - skew, y0 + 1e-3], 1),
                     np.stack([x0, y0], 1)], 1)
    return ring, rng.integers(0, 256, (side * side, 8), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--area", type=float, default=0.01)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--check", type=int, default=10, help="queries checked against brute force")
    args = ap.parse_args()
    ring, codes = tiles(args.n, 0)
    n = len(codes)
    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    flt = GeoFilter(ids, ring)
    build = time.perf_counter() - t
    index = HammingIndex(64)
    index.add(codes)
    lo, hi = ring.reshape(-1, 2).min(0), ring.reshape(-1, 2).max(0)
    span = (hi - lo) * args.area ** 0.5
    rng = np.random.default_rng(1)
    boxes = [(*(lo + rng.uniform(0, 1, 2) * (hi - lo - span)),) for _ in range(args.queries)]
    boxes = [(b[0], b[1], b[0] + span[0], b[1] + span[1]) for b in boxes]
    queries = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)

    polys = shapely.polygons(ring)
    for qi in range(args.check):  # exactness vs brute force
        box = shapely.box(*boxes[qi])
        inside = ids[shapely.intersects(polys, box)]
        d = np.unpackbits(np.bitwise_xor(codes[inside], queries[qi]), axis=1).sum(1)
        order = np.lexsort((inside, d))[:args.k]
        sel = flt.select(boxes[qi])
        got_ids, got_d = hamming_rank(codes[sel], sel, queries[qi:qi + 1], args.k)
        assert np.array_equal(sel, inside), "filter differs from brute force"
        assert np.array_equal(got_ids[0], inside[order]) and np.array_equal(got_d[0], d[order]), "ranking differs"

    filtered, full, share = [], [], []
    for qi in range(args.queries):  # interleaved timing
        t = time.perf_counter()
        sel = flt.select(boxes[qi])
        hamming_rank(codes[sel], sel, queries[qi:qi + 1], args.k)
        filtered.append(time.perf_counter() - t)
        share.append(len(sel) / n)
        t = time.perf_counter()
        index.search(queries[qi:qi + 1], args.k)
        full.append(time.perf_counter() - t)
    f, u = np.median(filtered) * 1e3, np.median(full) * 1e3
    print(f"{n} tiles, STRtree built in {build:.2f} s; area filter exact vs brute force on {args.check} queries: OK")
    print(f"query with a {args.area:.0%} area (median {np.median(share):.2%} of tiles pass): {f:.2f} ms; "
          f"no filter (flat exact scan of all tiles): {u:.2f} ms; ratio filtered/unfiltered = {f / u:.3f}")


if __name__ == "__main__":
    main()
