"""Scenes in, tiles out: list GeoTIFF/COG scenes (glob or STAC), plan their tile grid, read one tile.

Reading is windowed (``rasterio`` reads only the blocks of a tile's window), so a scene larger than
memory tiles in bounded memory. A tile's footprint is its pixel window's corners mapped through the
scene's affine transform (scene CRS) and reprojected to WGS84 lon/lat with ``rasterio.warp.transform``
(PROJ underneath; never hand-written projection math).
"""

from __future__ import annotations

import glob as _glob
import io
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.geo.recipe import BandRecipe, percentile_limits

__all__ = ["Scene", "TileSpec", "footprints", "list_scenes", "plan_tiles", "read_tile", "scene_stats",
           "tile_png", "tile_payload"]

EDGES = ("pad", "shift", "drop")


@dataclass
class Scene:
    """One geo-referenced raster: where its selected bands live and its pixel grid (shared by all bands)."""

    id: str
    uri: str
    sources: list[tuple[str, int]]   # (file, 1-based band) per selected band, in R, G, B order
    band_names: list[str]
    width: int
    height: int
    crs: str                         # "EPSG:n" when it has one, else WKT
    transform: tuple[float, ...]     # affine a, b, c, d, e, f (pixel → scene CRS)
    dtype: str
    datetime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = [list(s) for s in self.sources]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        d = dict(d)
        d["sources"] = [(str(h), int(b)) for h, b in d["sources"]]
        d["transform"] = tuple(d["transform"])
        return cls(**d)

    @property
    def gsd(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units (metres for UTM)."""
        a, b, _, d, e, _ = self.transform
        return math.hypot(a, d), math.hypot(b, e)


@dataclass(frozen=True)
class TileSpec:
    """Tile size and overlap (pixels of the output tile, or metres), optional target GSD, edge handling.

    ``edge``: ``pad`` = partial tiles at the right/bottom edge keep their (clipped) footprint and are padded
    with nodata (the grid covers the scene exactly once when overlap is 0); ``shift`` = the last tile of a
    row/column is moved inward to end at the edge (full tiles, overlapping their neighbour); ``drop`` = partial
    tiles are left out.
    """

    size: float = 256
    overlap: float = 0
    unit: str = "px"
    target_gsd: float | None = None
    edge: str = "pad"

    def __post_init__(self) -> None:
        if self.unit not in ("px", "m"):
            raise DataError(f"tile unit must be px or m, got {self.unit!r}")
        if self.edge not in EDGES:
            raise DataError(f"edge handling must be one of {', '.join(EDGES)}, got {self.edge!r}")
        if not self.size > 0 or self.overlap < 0 or self.overlap >= self.size:
            raise DataError(f"need tile size > 0 and 0 <= overlap < size, got size {self.size}, overlap {self.overlap}")
        if self.target_gsd is not None and not self.target_gsd > 0:
            raise DataError(f"target GSD must be > 0, got {self.target_gsd}")

    def geometry(self, scene: Scene) -> tuple[int, int, float, float]:
        """(output tile px, output overlap px, source px per output px in x, in y) for a scene."""
        gx, gy = scene.gsd
        out_gsd = self.target_gsd or gx
        if self.unit == "m":
            size, overlap = round(self.size / out_gsd), round(self.overlap / out_gsd)
        else:
            size, overlap = round(self.size), round(self.overlap)
        if size < 1 or overlap >= size:
            raise DataError(f"tile of {self.size} {self.unit} is {size} px at {out_gsd} m/px: too small")
        fx = fy = 1.0
        if self.target_gsd:
            fx, fy = self.target_gsd / gx, self.target_gsd / gy
        return size, overlap, fx, fy


# ------------------------------------------------------------------------------------------ listing
def _crs_text(crs: Any) -> str:
    if crs is None:
        raise DataError("scene has no CRS: it is not geo-referenced")
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _tiff_datetime(tags: dict[str, str]) -> str | None:
    for key in ("datetime", "DATETIME", "ACQUISITIONDATETIME", "TIFFTAG_DATETIME"):
        value = tags.get(key)
        if not value:
            continue
        for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
            try:
                return datetime.strptime(value.strip().rstrip("Z"), fmt).replace(tzinfo=timezone.utc).isoformat()
            except ValueError:
                continue
        try:
            return _iso(value)
        except DataError:
            continue
    return None


def _iso(value: str) -> str:
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"not an ISO 8601 date/time: {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()


def _select(names: list[str], count: int, bands: Sequence[str | int] | None, where: str) -> list[int]:
    """1-based band numbers for a selection by name or index (default: 1,2,3 or 1)."""
    if bands is None:
        return [1, 2, 3] if count >= 3 else [1]
    out = []
    for b in bands:
        if isinstance(b, int):
            if b > count:
                raise DataError(f"{where}: band {b} asked for, the file has {count}")
            out.append(b)
        else:
            matches = [i + 1 for i, n in enumerate(names) if n and n.lower() == b.lower()]
            if not matches:
                raise DataError(f"{where}: no band named {b!r} (bands: {', '.join(n or '?' for n in names)})")
            out.append(matches[0])
    return out


def _grid(href: str) -> dict[str, Any]:
    import rasterio

    try:
        with rasterio.open(href) as src:
            return {"width": src.width, "height": src.height, "crs": _crs_text(src.crs),
                    "transform": tuple(src.transform)[:6], "dtype": src.dtypes[0], "count": src.count,
                    "names": [d or "" for d in src.descriptions], "tags": src.tags()}
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"cannot open {href} as a raster: {exc}") from None


def scene_from_file(path: str, bands: Sequence[str | int] | None = None) -> Scene:
    g = _grid(path)
    chosen = _select(g["names"], g["count"], bands, path)
    return Scene(id=Path(path).stem, uri=path, sources=[(path, b) for b in chosen],
                 band_names=[g["names"][b - 1] or f"band{b}" for b in chosen], width=g["width"],
                 height=g["height"], crs=g["crs"], transform=g["transform"], dtype=g["dtype"],
                 datetime=_tiff_datetime(g["tags"]))


def _asset_band_names(asset: Any) -> list[str]:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    return [str(b.get("name") or b.get("common_name") or "") for b in bands]


def scene_from_item(item: Any, bands: Sequence[str | int] | None = None, asset: str | None = None) -> Scene:
    """A STAC Item → Scene: one multiband asset (``asset`` key, ``visual``, or the first GeoTIFF), or one
    asset per band when ``bands`` are names of assets (keys, or their eo:bands name / common name)."""
    where = f"STAC item {item.id}"
    assets = item.assets
    by_name: dict[str, str] = {}
    for key, a in assets.items():
        by_name.setdefault(key.lower(), key)
        names = _asset_band_names(a)
        if len(names) == 1:
            by_name.setdefault(names[0].lower(), key)
        for b in a.extra_fields.get("eo:bands") or a.extra_fields.get("bands") or []:
            if len(names) == 1 and b.get("common_name"):
                by_name.setdefault(str(b["common_name"]).lower(), key)
    per_band = asset is None and bands is not None and all(isinstance(b, str) and b.lower() in by_name
                                                           for b in bands)
    if per_band:
        assert bands is not None
        hrefs = [assets[by_name[str(b).lower()]].get_absolute_href() for b in bands]
        grids = [_grid(h) for h in hrefs]
        for h, g in zip(hrefs[1:], grids[1:], strict=True):
            if (g["width"], g["height"], g["crs"], g["transform"]) != \
                    (grids[0]["width"], grids[0]["height"], grids[0]["crs"], grids[0]["transform"]):
                raise DataError(f"{where}: band assets {hrefs[0]} and {h} are on different pixel grids; "
                                "choose bands of one resolution")
        sources = [(h, 1) for h in hrefs]
        names = [str(b) for b in bands]
        g = grids[0]
    else:
        if asset is None:
            candidates = [k for k, a in assets.items() if "tiff" in (a.media_type or "") or
                          str(a.href).lower().endswith((".tif", ".tiff"))]
            asset = "visual" if "visual" in assets else (candidates[0] if candidates else None)
            if asset is None:
                raise DataError(f"{where}: no GeoTIFF asset; name one with --asset KEY")
        if asset not in assets:
            raise DataError(f"{where}: no asset {asset!r} (assets: {', '.join(assets)})")
        href = assets[asset].get_absolute_href()
        g = _grid(href)
        stac_names = _asset_band_names(assets[asset])
        file_names = [n or (stac_names[i] if i < len(stac_names) else "") for i, n in enumerate(g["names"])]
        chosen = _select(file_names, g["count"], bands, f"{where} asset {asset}")
        sources = [(href, b) for b in chosen]
        names = [file_names[b - 1] or f"band{b}" for b in chosen]
    when = item.datetime.astimezone(timezone.utc).isoformat() if item.datetime else \
        (_iso(item.properties["start_datetime"]) if item.properties.get("start_datetime") else None)
    return Scene(id=item.id, uri=item.get_self_href() or sources[0][0], sources=sources, band_names=names,
                 width=g["width"], height=g["height"], crs=g["crs"], transform=g["transform"], dtype=g["dtype"],
                 datetime=when)


def _stac_items(path: str) -> list[Any]:
    import pystac

    try:
        with open(path, encoding="utf-8") as f:
            kind = json.load(f).get("type")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read STAC JSON {path}: {exc}") from None
    try:
        if kind == "Feature":
            return [pystac.Item.from_file(path)]
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_file(path))
        if kind in ("Catalog", "Collection"):
            return list(pystac.read_file(path).get_items(recursive=True))
    except Exception as exc:  # pystac raises many kinds; name the file
        raise DataError(f"{path}: not a readable STAC document: {type(exc).__name__}: {exc}") from None
    raise DataError(f"{path}: STAC type {kind!r} is not an Item, ItemCollection, Catalog or Collection")


def list_scenes(sources: Iterable[str], bands: Sequence[str | int] | None = None,
                asset: str | None = None) -> list[Scene]:
    """Scenes from GeoTIFF/COG globs and STAC JSON files (``*.json``), sorted by id; ids must be unique."""
    scenes: list[Scene] = []
    for source in sources:
        paths = sorted(_glob.glob(source, recursive=True)) if any(c in source for c in "*?[") else [source]
        if not paths:
            raise DataError(f"no files match {source!r}")
        for path in paths:
            if not os.path.exists(path):
                raise DataError(f"scene source not found: {path}")
            if path.lower().endswith(".json"):
                scenes.extend(scene_from_item(item, bands, asset) for item in _stac_items(path))
            else:
                scenes.append(scene_from_file(path, bands))
    if not scenes:
        raise DataError("no scenes found")
    scenes.sort(key=lambda s: s.id)
    dup = sorted({s.id for s in scenes if sum(t.id == s.id for t in scenes) > 1})
    if dup:
        raise DataError(f"scene ids are not unique: {', '.join(dup[:5])} (rename the files or items)")
    return scenes


# ------------------------------------------------------------------------------------------- tiling
def _starts(length: int, window: float, stride: float, edge: str) -> list[float]:
    if window >= length:
        return [0.0] if edge != "drop" or window == length else []
    n_full = int(math.floor((length - window) / stride + 1e-9)) + 1
    starts = [i * stride for i in range(n_full)]
    end = starts[-1] + window
    if end < length - 1e-9:
        if edge == "pad":
            starts.append(n_full * stride)
        elif edge == "shift":
            starts.append(length - window)
    return starts


def plan_tiles(scene: Scene, spec: TileSpec) -> list[dict[str, Any]]:
    """The scene's tiles as ``{"window": [col, row, w, h] (clipped, source px), "out": [w, h] px}``, row-major."""
    size, overlap, fx, fy = spec.geometry(scene)
    wx, wy = size * fx, size * fy
    sx, sy = (size - overlap) * fx, (size - overlap) * fy
    tiles = []
    for row in _starts(scene.height, wy, sy, spec.edge):
        for col in _starts(scene.width, wx, sx, spec.edge):
            w, h = min(wx, scene.width - col), min(wy, scene.height - row)
            tiles.append({"window": [col, row, w, h], "out": [max(1, round(w / fx)), max(1, round(h / fy))],
                          "size": size})
    return tiles


def footprints(scene: Scene, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corner polygons ``[N, 5, 2]`` of pixel windows ``[N, 4]`` (col, row, w, h): scene CRS and WGS84 lon/lat."""
    from rasterio.transform import Affine
    from rasterio.warp import transform as warp

    win = np.asarray(windows, np.float64).reshape(-1, 4)
    c, r, w, h = win.T
    cols = np.stack([c, c + w, c + w, c, c], axis=1)
    rows = np.stack([r, r, r + h, r + h, r], axis=1)
    aff = Affine(*scene.transform)
    xs = aff.a * cols + aff.b * rows + aff.c
    ys = aff.d * cols + aff.e * rows + aff.f
    lon, lat = warp(scene.crs, "EPSG:4326", xs.ravel().tolist(), ys.ravel().tolist())
    native = np.stack([xs, ys], axis=-1)
    wgs84 = np.stack([np.asarray(lon).reshape(xs.shape), np.asarray(lat).reshape(xs.shape)], axis=-1)
    return native, wgs84


def tile_payload(scene: Scene, tile: dict[str, Any], native: np.ndarray, wgs84: np.ndarray) -> dict[str, Any]:
    """The flat payload fields a tile carries into the index (documented in docs/geo.md)."""
    from rasterio.transform import Affine
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    col, row, w, h = tile["window"]
    aff = window_transform(Window(col, row, w, h), Affine(*scene.transform))
    ow, oh = tile["out"]
    aff = aff @ Affine.scale(w / ow, h / oh)
    return {"path": f"{scene.uri}#{_num(col)},{_num(row)},{_num(w)},{_num(h)}", "scene_id": scene.id,
            "scene": scene.uri, "window_col": _num(col), "window_row": _num(row), "window_width": _num(w),
            "window_height": _num(h), "crs": scene.crs, "transform": [float(v) for v in tuple(aff)[:6]],
            "gsd": float(math.hypot(aff.a, aff.d)),
            "footprint": native.tolist(), "footprint_wgs84": wgs84.tolist(),
            "lon_min": float(wgs84[:, 0].min()), "lat_min": float(wgs84[:, 1].min()),
            "lon_max": float(wgs84[:, 0].max()), "lat_max": float(wgs84[:, 1].max()),
            "datetime": scene.datetime}


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


# ------------------------------------------------------------------------------------------ reading
_HANDLES: OrderedDict[str, Any] = OrderedDict()
GDAL_CACHE_MB = 128  # GDAL's block cache otherwise grows to 5 % of the machine's RAM per process


def _open(href: str) -> Any:
    """A per-process cache of open datasets: opening a COG costs more than reading one tile of it.

    Tiles are read once each, so GDAL's block cache buys little; it is capped at ``GDAL_CACHE_MB`` (or the
    ``GDAL_CACHEMAX`` environment variable when set) so a worker's memory stays bounded on any scene size.
    """
    import rasterio

    if not _HANDLES and "GDAL_CACHEMAX" not in os.environ:
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB * 2 ** 20)
    if href in _HANDLES:
        _HANDLES.move_to_end(href)
        return _HANDLES[href]
    src = rasterio.open(href)
    _HANDLES[href] = src
    while len(_HANDLES) > 16:
        _HANDLES.popitem(last=False)[1].close()
    return src


def _resampling(name: str) -> Any:
    from rasterio.enums import Resampling

    try:
        return Resampling[name]
    except KeyError:
        raise DataError(f"unknown resampling {name!r}; e.g. nearest, bilinear, cubic, average") from None


def read_window(scene: Scene, window: Sequence[float], out: Sequence[int], size: int,
                resampling: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Band data ``[C, size, size]`` and valid mask ``bool [size, size]`` of one (clipped) window, padded."""
    from rasterio.windows import Window

    col, row, w, h = window
    ow, oh = int(out[0]), int(out[1])
    rs = _resampling(resampling)
    data = np.zeros((len(scene.sources), size, size), np.dtype(scene.dtype))
    valid = np.zeros((size, size), bool)
    valid[:oh, :ow] = True
    win = Window(col, row, w, h)
    for i, (href, band) in enumerate(scene.sources):
        src = _open(href)
        data[i, :oh, :ow] = src.read(band, window=win, out_shape=(oh, ow), resampling=rs)
        valid[:oh, :ow] &= src.read_masks(band, window=win, out_shape=(oh, ow), resampling=_resampling("nearest")) > 0
    return data, valid


def read_tile(scene: Scene, tile: dict[str, Any], recipe: BandRecipe) -> tuple[np.ndarray | None, str | None]:
    """``uint8 [H, W, 3]`` of a tile, or ``(None, reason)`` when it is mostly nodata (a skip, not an error)."""
    data, valid = read_window(scene, tile["window"], tile["out"], tile["size"], recipe.resampling)
    invalid = 1.0 - float(valid.mean())
    if invalid > recipe.max_nodata:
        return None, f"skipped: mostly nodata ({invalid:.0%} of the tile invalid, limit {recipe.max_nodata:.0%})"
    limits = recipe.limits(scene.id, data.dtype, data.shape[0])
    return recipe.apply(data, valid, limits), None


def tile_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of a tile: what the encoders (which take encoded images) read."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def scene_stats(scene: Scene, percentiles: Sequence[float], max_side: int = 1024) -> list[list[float]]:
    """Per-band percentile limits from a decimated read (at most ``max_side`` px a side: bounded memory)."""
    f = max(1.0, max(scene.width, scene.height) / max_side)
    out = (max(1, round(scene.width / f)), max(1, round(scene.height / f)))
    size = max(out)
    data, valid = read_window(scene, [0, 0, scene.width, scene.height], out, size, "nearest")
    return percentile_limits(data[:, :out[1], :out[0]], valid[:out[1], :out[0]], percentiles)
