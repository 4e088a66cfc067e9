"""Command-line options shared by ``tfduch archive tile`` and ``tfduch encode-archive --scenes``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfduch.errors import DataError
from tfduch.geo.recipe import BandRecipe, parse_bands, parse_scale
from tfduch.geo.scenes import EDGES, TileSpec

__all__ = ["add_geo_args", "recipe_from_args", "tile_spec_from_args"]


def add_geo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geo scenes (GeoTIFF / COG / STAC; needs tfduch[geo], see docs/geo.md)")
    g.add_argument("--bands", metavar="B,B,B",
                   help="3 bands as R,G,B (or 1 grey) by name (B04,B03,B02; STAC asset keys, eo:bands names or "
                   "common names like red) or 1-based index (3,2,1); default: bands 1,2,3")
    g.add_argument("--asset", metavar="KEY", help="STAC asset holding all bands (default: visual, else the first "
                   "GeoTIFF; not needed when --bands names one asset per band)")
    g.add_argument("--scale", default="none", metavar="SPEC",
                   help="per-band scaling to 8 bits: none (default; 8-bit as is), fixed:LO,HI (e.g. fixed:0,10000 "
                   "for Sentinel-2 L2A), percentile:P1,P2 (per scene, e.g. percentile:2,98)")
    g.add_argument("--gamma", type=float, default=1.0, help="gamma applied after scaling (default 1)")
    g.add_argument("--tile-size", type=float, default=256, help="tile size (default 256 px; the UC Merced size)")
    g.add_argument("--overlap", type=float, default=0, help="overlap between neighbouring tiles (default 0)")
    g.add_argument("--tile-unit", choices=("px", "m"), default="px", help="unit of --tile-size/--overlap")
    g.add_argument("--target-gsd", type=float, metavar="M",
                   help="resample to this many metres per pixel first (the model saw UC Merced: 0.3 m/px)")
    g.add_argument("--resampling", default="bilinear", help="resampling for --target-gsd (default bilinear)")
    g.add_argument("--edge", choices=EDGES, default="pad",
                   help="partial tiles at the right/bottom edge: pad (default; the grid covers the scene once), "
                   "shift (move the last tile inward), drop")
    g.add_argument("--max-nodata", type=float, default=0.5,
                   help="skip tiles with a larger share of nodata/masked/padded pixels (default 0.5)")
    g.add_argument("--recipe", type=Path, metavar="JSON",
                   help="reuse the band recipe of an earlier archive (its manifest.json or geo.json): "
                   "later additions get the same pixels")


def recipe_from_args(args: argparse.Namespace) -> BandRecipe:
    if args.recipe:
        try:
            doc = json.loads(Path(args.recipe).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"--recipe {args.recipe}: cannot read: {exc}") from None
        doc = doc.get("geo", doc)
        if "recipe" not in doc:
            raise DataError(f"--recipe {args.recipe}: no band recipe in it (want an archive's manifest/geo.json)")
        return BandRecipe.from_dict(doc["recipe"])
    kind, limits = parse_scale(args.scale)
    return BandRecipe(bands=parse_bands(args.bands), scale=kind, scale_args=limits, gamma=args.gamma,
                      max_nodata=args.max_nodata, resampling=args.resampling)


def tile_spec_from_args(args: argparse.Namespace) -> TileSpec:
    return TileSpec(size=args.tile_size, overlap=args.overlap, unit=args.tile_unit, target_gsd=args.target_gsd,
                    edge=args.edge)
