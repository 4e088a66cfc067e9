"""A scene larger than 2 GiB uncompressed, tiled by ``tfduch archive tile`` with bounded peak memory.

    python bench/geo_big_scene.py [--side 20480] [--out /tmp/tfduch-big-scene] [--keep]

Writes a 3-band uint16 GeoTIFF of ``side`` x ``side`` pixels (20480² x 3 x 2 B = 2.34 GiB uncompressed),
deflate-compressed and mostly flat so it stays small on disk (every 8th 256-px block is textured), strip by
strip so the writer never holds the scene either. Then runs ``python -m tfduch.cli archive tile`` on it in a
child process (band recipe fixed:0,10000, 256-px tiles, PNG tiles written) and reports the child's peak
resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) next to the scene's uncompressed size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_big(path: Path, side: int) -> int:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(400_000.0, 5_000_000.0, 0.3, 0.3), "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "YES"}
    rng = np.random.default_rng(0)
    texture = rng.integers(500, 9000, (3, 256, 256), dtype=np.uint16)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, 512):
            h = min(512, side - row)
            strip = np.full((3, h, side), 3000, np.uint16)
            for r in range(0, h, 256):
                for c in range((row // 256 + r // 256) % 8 * 256, side, 8 * 256):
                    strip[:, r:r + 256, c:c + 256] = texture[:, :min(256, h - r), :min(256, side - c)]
            dst.write(strip, window=Window(0, row, side, h))
    return side * side * 3 * 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=20480)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tfduch-big-scene"))
    ap.add_argument("--keep", action="store_true", help="keep the scene and tiles")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scene = args.out / "big.tif"
    t = time.perf_counter()
    raw = write_big(scene, args.side)
    print(f"scene {args.side}x{args.side}x3 uint16: {raw / 2 ** 30:.2f} GiB uncompressed, "
          f"{scene.stat().st_size / 2 ** 20:.1f} MiB on disk (written in {time.perf_counter() - t:.0f} s)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tfduch.cli", "archive", "tile", "--scenes", str(scene), "--out",
                          str(args.out / "tiles"), "--scale", "fixed:0,10000", "--json"],
                         env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"archive tile: {summary['tiles_written']} tiles in {seconds:.0f} s; peak memory {peak / 2 ** 20:.0f} MiB "
          f"({peak / raw:.1%} of the uncompressed scene); bar < 1024 MiB: {'met' if peak < 2 ** 30 else 'NOT met'}")
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
