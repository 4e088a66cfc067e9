"""Real GeoTIFFs for tests and the demo: UC Merced images mosaicked into geo-referenced scenes.

No satellite scene can be downloaded on this project's machines, so scenes are built with rasterio from
real pixels: UC Merced images (``images/*.webp`` of the dataset, 256 px at 0.3 m/px) placed on a grid in a
UTM CRS with a known transform, or smooth synthetic pixels when the dataset is absent. Variants:

* ``rgb_uint8.tif``  — 3-band 8-bit tiled GeoTIFF (the images' pixels exactly);
* ``ms_uint16.tif``  — 4-band 16-bit "multispectral" (descriptions B02, B03, B04, B08; DN = 1000 + 40 * pixel,
  so ``--bands B04,B03,B02 --scale fixed:1000,11200`` gives back the exact RGB pixels) with a nodata
  (0) block covering part of the scene;
* ``rgb_cog.tif``    — the 8-bit scene as a Cloud-Optimized GeoTIFF (GDAL's COG driver, with overviews);
* ``stac/``          — a static STAC catalog: one Item with the COG as ``visual`` asset and one with a
  separate single-band asset per band (B02/B03/B04 with ``eo:bands``), each with a datetime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError

__all__ = ["DEFAULT_CRS", "GSD", "build_scene_set", "load_tiles", "write_scene"]

GSD = 0.3048                 # UC Merced: 1 foot per pixel (USGS National Map urban orthoimagery)
DEFAULT_CRS = "EPSG:32617"   # UTM zone 17N (eastern USA)
ORIGIN = (500_000.0, 4_000_000.0)


def load_tiles(n: int, data_root: str | Path | None = None, seed: int = 0, size: int = 256
               ) -> tuple[list[str], np.ndarray]:
    """``n`` RGB images ``uint8 [n, size, size, 3]``: UC Merced's (exactly size x size ones) when present.

    The images are taken evenly across the numbered files (UC Merced numbers them class by class), so a
    mosaic shows many classes rather than 16 agricultural fields.
    """
    names: list[str] = []
    tiles: list[np.ndarray] = []
    root = Path(data_root) if data_root else None
    if root is not None and (root / "images").is_dir():
        from PIL import Image

        files = sorted((root / "images").glob("*.webp"), key=lambda p: (len(p.stem), p.stem))
        step = max(1, len(files) // max(n, 1))
        order = [files[(i * step + j) % len(files)] for j in range(step) for i in range(-(-len(files) // step))]
        for path in dict.fromkeys(order):
            with Image.open(path) as img:
                if img.size != (size, size):
                    continue
                tiles.append(np.asarray(img.convert("RGB")))
            names.append(str(path))
            if len(tiles) == n:
                break
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    while len(tiles) < n:  # smooth synthetic pixels: a few random waves per channel
        f = rng.uniform(1, 6, (3, 2))
        ph = rng.uniform(0, 6.3, 3)
        img = np.stack([127 + 120 * np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c]) for c in range(3)], -1)
        tiles.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
        names.append(f"synthetic-{len(tiles) - 1}")
    return names, np.stack(tiles)


def mosaic(tiles: np.ndarray, cols: int) -> np.ndarray:
    """``[n, s, s, 3]`` → ``[3, rows*s, cols*s]`` (row-major; missing cells black)."""
    n, s = tiles.shape[0], tiles.shape[1]
    rows = -(-n // cols)
    out = np.zeros((3, rows * s, cols * s), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[:, r * s:(r + 1) * s, c * s:(c + 1) * s] = np.transpose(tiles[i], (2, 0, 1))
    return out


def write_scene(path: str | Path, bands: np.ndarray, *, crs: str = DEFAULT_CRS, origin: tuple[float, float] = ORIGIN,
                gsd: float = GSD, nodata: float | None = None, descriptions: list[str] | None = None,
                datetime: str | None = None, cog: bool = False, compress: str = "deflate") -> Path:
    """Write ``[C, H, W]`` as a tiled GeoTIFF (or COG) with a north-up transform at ``origin`` (top-left)."""
    import rasterio
    from rasterio.transform import from_origin

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = bands.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": bands.dtype.name,
                               "crs": crs, "transform": from_origin(origin[0], origin[1], gsd, gsd), "tiled": True,
                               "blockxsize": 256, "blockysize": 256, "compress": compress, "nodata": nodata}
    target = path.with_suffix(".tmp.tif") if cog else path
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(bands)
        if descriptions:
            for i, d in enumerate(descriptions):
                dst.set_band_description(i + 1, d)
        if datetime:
            dst.update_tags(TIFFTAG_DATETIME=datetime)
    if cog:
        from rasterio.shutil import copy

        copy(target, path, driver="COG", compress=compress)
        target.unlink()
    return path


def build_scene_set(out: str | Path, n_images: int = 16, cols: int = 4, data_root: str | Path | None = None
                    ) -> dict[str, Any]:
    """Write the scene variants and STAC catalog under ``out``; returns where each image was placed."""
    import pystac

    out = Path(out)
    names, tiles = load_tiles(n_images, data_root)
    rgb = mosaic(tiles, cols)
    _, h, w = rgb.shape
    paths = {"rgb": write_scene(out / "rgb_uint8.tif", rgb, datetime="2024:05:01 10:30:00")}
    ms = np.zeros((4, h, w), np.uint16)
    ms[0], ms[1], ms[2] = (1000 + 40 * rgb[2].astype(np.uint16), 1000 + 40 * rgb[1].astype(np.uint16),
                           1000 + 40 * rgb[0].astype(np.uint16))
    ms[3] = 1000 + 20 * rgb.mean(axis=0).astype(np.uint16)
    nd = (slice(0, h // 2), slice(0, w // 2 + 64))   # nodata: the top-left quarter and a bit more
    ms[:, nd[0], nd[1]] = 0
    paths["ms"] = write_scene(out / "ms_uint16.tif", ms, nodata=0, descriptions=["B02", "B03", "B04", "B08"],
                              origin=(ORIGIN[0] + w * GSD + 100, ORIGIN[1]), datetime="2024:06:15 10:30:00")
    paths["cog"] = write_scene(out / "rgb_cog.tif", rgb, cog=True, origin=(ORIGIN[0], ORIGIN[1] - h * GSD - 100))
    # STAC: item "cog-scene" (visual asset), item "s2-like" (one asset per band)
    stac = out / "stac"
    for i, key in enumerate(("B02", "B03", "B04")):
        write_scene(stac / "s2-like" / f"{key}.tif", ms[i:i + 1], nodata=0, descriptions=[key],
                    origin=(ORIGIN[0] + w * GSD + 100, ORIGIN[1] - h * GSD - 100))
    catalog = pystac.Catalog(id="tfduch-demo", description="UC Merced mosaics as geo-referenced scenes")
    from datetime import datetime, timezone

    def item(item_id: str, tif: Path, when: datetime) -> pystac.Item:
        import rasterio
        from rasterio.warp import transform_bounds

        with rasterio.open(tif) as src:
            b = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        geom = {"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]],
                                                    [b[0], b[1]]]]}
        return pystac.Item(id=item_id, geometry=geom, bbox=list(b), datetime=when, properties={})

    a = item("cog-scene", paths["cog"], datetime(2024, 7, 1, 10, 30, tzinfo=timezone.utc))
    a.add_asset("visual", pystac.Asset(href=str(paths["cog"].resolve()), media_type=pystac.MediaType.COG,
                                       roles=["visual"]))
    b = item("s2-like", stac / "s2-like" / "B02.tif", datetime(2024, 8, 1, 10, 30, tzinfo=timezone.utc))
    common = {"B02": "blue", "B03": "green", "B04": "red"}
    for key in ("B02", "B03", "B04"):
        b.add_asset(key, pystac.Asset(href=str((stac / "s2-like" / f"{key}.tif").resolve()),
                                      media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                      extra_fields={"eo:bands": [{"name": key, "common_name": common[key]}]}))
    catalog.add_items([a, b])
    catalog.normalize_hrefs(str(stac))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    placed = [{"name": n, "row": i // cols, "col": i % cols} for i, n in enumerate(names)]
    info = {"images": placed, "cols": cols, "tile": int(tiles.shape[1]), "gsd": GSD, "crs": DEFAULT_CRS,
            "scenes": {k: str(v) for k, v in paths.items()}, "stac": str(stac / "catalog.json"),
            "nodata_window": [0, 0, w // 2 + 64, h // 2]}
    (out / "scenes.json").write_text(json.dumps(info, indent=1))
    if not paths["rgb"].exists():
        raise DataError("scene set was not written")
    return info
