"""Tiles/s of ``encode-archive --scenes`` (read window + band recipe + PNG + encode) vs the same pixels as files.

    python bench/geo_throughput.py [--run /work/runs/baseline] [--images 256] [--workers 2] [--rounds 1]

Builds a scene from ``--images`` UC Merced images (16 per row; a 4-band uint16 GeoTIFF, recipe
``B04,B03,B02`` ``fixed:1000,11200``, so tiles are exactly the images' pixels) and writes the same tiles as PNG
files. Then runs :func:`tfduch.archive.beam.encode_archive` twice per round on the DirectRunner with
``--workers`` processes: over the scene's tiles, and over the PNG files (``--input``), alternating which goes
first. Reports items/s of each and the ratio tiles/files (target >= 0.8). The machine is shared: only the
ratio within one run means much.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfduch.archive.beam import EncoderSpec, encode_archive, pipeline_options
from tfduch.geo.demo import load_tiles, mosaic, write_scene
from tfduch.geo.recipe import BandRecipe
from tfduch.geo.scenes import TileSpec
from tfduch.geo.tiler import plan, tile_job_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="/work/runs/baseline")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("TFDUCH_DATA", "../shared/data/ucm_captions"))
    args = ap.parse_args()
    names, images = load_tiles(args.images, args.data)
    rgb = mosaic(images, 16)
    ms = np.stack([1000 + 40 * rgb[2].astype(np.uint16), 1000 + 40 * rgb[1].astype(np.uint16),
                   1000 + 40 * rgb[0].astype(np.uint16), 1000 + 20 * rgb.mean(0).astype(np.uint16)])
    spec = EncoderSpec(run=args.run, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        scene = write_scene(Path(tmp) / "scene.tif", ms, descriptions=["B02", "B03", "B04", "B08"])
        recipe = BandRecipe(bands=("B04", "B03", "B02"), scale="fixed", scale_args=(1000, 11200))
        tiles = plan([str(scene)], TileSpec(256), recipe, log=lambda _: None)
        files = Path(tmp) / "files"
        files.mkdir()
        for i, job in enumerate(tiles.jobs):
            (files / f"{i:05d}.png").write_bytes(tile_job_bytes(job, recipe)[0])
        rates: dict[str, list[float]] = {"tiles": [], "files": []}
        for r in range(args.rounds):
            for kind in (("tiles", "files") if r % 2 == 0 else ("files", "tiles")):
                out = Path(tmp) / f"out-{kind}"
                shutil.rmtree(out, ignore_errors=True)
                opts = pipeline_options(num_workers=args.workers)
                if kind == "tiles":
                    res = encode_archive([str(scene)], str(out), spec, shard_size=32, options=opts, tiles=tiles,
                                         log=lambda _: None, progress_interval=600)
                else:
                    res = encode_archive([str(files / "*.png")], str(out), spec, shard_size=32, options=opts,
                                         log=lambda _: None, progress_interval=600)
                assert res.items == len(tiles.jobs) and res.dead == 0
                rates[kind].append(res.items_per_second)
                print(f"round {r + 1} {kind}: {res.items} items in {res.seconds:.1f} s = {res.items_per_second:.2f}/s")
    t, f = float(np.median(rates["tiles"])), float(np.median(rates["files"]))
    print(f"{len(tiles.jobs)} tiles, {args.workers} workers: scene tiles {t:.2f}/s, image files {f:.2f}/s, "
          f"ratio tiles/files = {t / f:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
