"""Retrieval parity: UC Merced images embedded in geo-referenced scenes and tiled give the codes of the files.

    python bench/geo_parity.py [--run /work/runs/baseline] [--images 64] [--data ../shared/data/ucm_captions]

Builds two scenes from ``--images`` UC Merced images (8 per row, EPSG:32617, 0.3048 m/px): an 8-bit COG and a
4-band uint16 GeoTIFF (DN = 1000 + 40 * pixel, bands B02, B03, B04, B08), tiles both at 256 px (recipes: as is;
``--bands B04,B03,B02 --scale fixed:1000,11200``) through :func:`tfduch.geo.tiler.tile_job_bytes` (what
``encode-archive --scenes`` runs), encodes the tiles and the original ``.webp`` files with the trained run, and
reports the share of equal code bits and whether each tile's nearest file code (Hamming) is its own image.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from tfduch.geo.demo import load_tiles, mosaic, write_scene
from tfduch.geo.recipe import BandRecipe
from tfduch.geo.scenes import TileSpec
from tfduch.geo.tiler import plan, tile_job_bytes
from tfduch.index.encoders import open_encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="/work/runs/baseline")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--data", default=os.environ.get("TFDUCH_DATA", "../shared/data/ucm_captions"))
    args = ap.parse_args()
    names, images = load_tiles(args.images, args.data)
    if any(n.startswith("synthetic") for n in names):
        raise SystemExit(f"needs {args.images} UC Merced images of 256 px under {args.data}/images")
    encoder = open_encoder(args.run, None)
    direct = np.asarray(encoder.encode_images(names)) > 0
    rgb = mosaic(images, 8)
    ms = np.stack([1000 + 40 * rgb[2].astype(np.uint16), 1000 + 40 * rgb[1].astype(np.uint16),
                   1000 + 40 * rgb[0].astype(np.uint16), 1000 + 20 * rgb.mean(0).astype(np.uint16)])
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "cog-uint8": (write_scene(Path(tmp) / "cog.tif", rgb, cog=True), BandRecipe()),
            "uint16-B04,B03,B02": (write_scene(Path(tmp) / "ms.tif", ms, descriptions=["B02", "B03", "B04", "B08"]),
                                   BandRecipe(bands=("B04", "B03", "B02"), scale="fixed", scale_args=(1000, 11200))),
        }
        for name, (path, recipe) in variants.items():
            p = plan([str(path)], TileSpec(256), recipe, log=lambda _: None)
            data = [tile_job_bytes(job, recipe)[0] for job in p.jobs][: len(names)]
            tiled = np.asarray(encoder.encode_images(data)) > 0
            equal = (tiled == direct).mean()
            dist = (tiled[:, None, :] != direct[None, :, :]).sum(-1)
            own = (dist.argmin(1) == np.arange(len(names))) | (dist[np.arange(len(names)), np.arange(len(names))] == 0)
            print(f"{name}: {len(names)} tiles vs files, equal code bits {equal:.4%}, identical codes "
                  f"{(tiled == direct).all(1).mean():.1%}, nearest file is the tile's own image {own.mean():.1%}")


if __name__ == "__main__":
    main()
