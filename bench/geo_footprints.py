"""Footprints vs pyproj and exact grid cover, over the demo scenes and several tilings.

    python bench/geo_footprints.py [--data ../shared/data/ucm_captions]

Builds the demo scene set (:func:`tfduch.geo.demo.build_scene_set`: 8-bit GeoTIFF, 16-bit 4-band, COG; UTM 17N),
tiles each scene with 256 / 100 / 97 px, 30 m and 128 px at 0.5 m GSD (overlap 0, edge=pad), and reports the
largest difference between the tiles' WGS84 corners (rasterio.warp) and pyproj's transform of the same
scene-CRS corners, plus, per tiling, (sum of tile areas − scene area) / scene area (overlaps) and the symmetric
difference of the tiles' union and the scene rectangle / scene area (gaps).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import pyproj
import shapely

from tfduch.geo.demo import build_scene_set
from tfduch.geo.scenes import TileSpec, footprints, list_scenes, plan_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("TFDUCH_DATA", "../shared/data/ucm_captions"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        info = build_scene_set(tmp, n_images=16, data_root=args.data)
        scenes = list_scenes([info["scenes"][k] for k in ("rgb", "ms", "cog")])
        worst, over, gap, tiles = 0.0, 0.0, 0.0, 0
        for s in scenes:
            to_wgs84 = pyproj.Transformer.from_crs(s.crs, "EPSG:4326", always_xy=True)
            x0, y1, g = s.transform[2], s.transform[5], s.gsd[0]
            bounds = shapely.box(x0, y1 - s.height * g, x0 + s.width * g, y1)
            for spec in (TileSpec(256), TileSpec(100), TileSpec(97), TileSpec(30, unit="m"),
                         TileSpec(128, target_gsd=0.5)):
                plan = plan_tiles(s, spec)
                native, wgs84 = footprints(s, np.array([t["window"] for t in plan]))
                lon, lat = to_wgs84.transform(native[..., 0], native[..., 1])
                worst = max(worst, float(np.abs(wgs84[..., 0] - lon).max()), float(np.abs(wgs84[..., 1] - lat).max()))
                polys = shapely.polygons(native)
                over = max(over, abs(float(shapely.area(polys).sum()) - bounds.area) / bounds.area)
                gap = max(gap, shapely.symmetric_difference(shapely.union_all(polys), bounds).area / bounds.area)
                tiles += len(plan)
    print(f"{len(scenes)} scenes x 5 tilings, {tiles} tiles: max |WGS84 corner - pyproj| = {worst:.2e} deg "
          f"(bar 1e-7); grid cover: max relative overlap {over:.1e}, max relative gap/excess {gap:.1e}")


if __name__ == "__main__":
    main()
