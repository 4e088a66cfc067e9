"""Geo scenes → tiles: footprints vs pyproj, exact grid cover, nodata skips, band recipe, STAC, COG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pystac")

import pyproj  # noqa: E402
import shapely  # noqa: E402
from conftest import real_data_root  # noqa: E402

from tfduch.errors import DataError  # noqa: E402
from tfduch.geo.demo import GSD, build_scene_set, load_tiles, write_scene  # noqa: E402
from tfduch.geo.recipe import BandRecipe, parse_bands, parse_scale  # noqa: E402
from tfduch.geo.scenes import TileSpec, footprints, list_scenes, plan_tiles, read_tile  # noqa: E402
from tfduch.geo.tiler import plan, write_tiles  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_scene_set(tmp_path_factory.mktemp("scenes"), n_images=8, cols=4, data_root=real_data_root())


def test_footprints_agree_with_pyproj(scenes: dict) -> None:
    scene = list_scenes([scenes["scenes"]["rgb"]])[0]
    tiles = plan_tiles(scene, TileSpec(100, overlap=20))
    native, wgs84 = footprints(scene, np.array([t["window"] for t in tiles]))
    to_wgs84 = pyproj.Transformer.from_crs(scene.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(native[..., 0], native[..., 1])
    assert np.abs(wgs84[..., 0] - lon).max() < 1e-7 and np.abs(wgs84[..., 1] - lat).max() < 1e-7
    # the scene's top-left corner is the transform's origin
    assert native[0, 0].tolist() == [500_000.0, 4_000_000.0]
    assert abs(native[0, 1, 0] - native[0, 0, 0] - 100 * GSD) < 1e-6


@pytest.mark.parametrize("size,overlap_ok", [(256, True), (300, True), (97, True)])
def test_grid_covers_scene_exactly_once(scenes: dict, size: int, overlap_ok: bool) -> None:
    scene = list_scenes([scenes["scenes"]["rgb"]])[0]
    tiles = plan_tiles(scene, TileSpec(size, edge="pad"))
    native, _ = footprints(scene, np.array([t["window"] for t in tiles]))
    polys = shapely.polygons(native)
    x0, y1 = scene.transform[2], scene.transform[5]
    bounds = shapely.box(x0, y1 - scene.height * GSD, x0 + scene.width * GSD, y1)
    union = shapely.union_all(polys)
    assert abs(shapely.area(polys).sum() - bounds.area) < 1e-6 * bounds.area   # no overlaps
    assert shapely.symmetric_difference(union, bounds).area < 1e-6 * bounds.area  # no gaps
    expected = -(-scene.width // size) * -(-scene.height // size)
    assert len(tiles) == expected


def test_edge_modes_and_overlap(scenes: dict) -> None:
    scene = list_scenes([scenes["scenes"]["rgb"]])[0]  # 1024 x 512
    shift = plan_tiles(scene, TileSpec(300, edge="shift"))
    assert all(t["window"][2] == 300 and t["window"][3] == 300 for t in shift)
    assert max(t["window"][0] + 300 for t in shift) == scene.width
    drop = plan_tiles(scene, TileSpec(300, edge="drop"))
    assert len(drop) == (scene.width // 300) * (scene.height // 300)
    over = plan_tiles(scene, TileSpec(256, overlap=128))
    assert sorted({t["window"][0] for t in over})[:3] == [0, 128, 256]
    metres = plan_tiles(scene, TileSpec(256 * GSD, unit="m"))
    assert [t["window"] for t in metres] == [t["window"] for t in plan_tiles(scene, TileSpec(256))]
    half = plan_tiles(scene, TileSpec(128, target_gsd=2 * GSD))  # 128 px at twice the GSD = 256 source px
    assert half[0]["window"][2] == pytest.approx(256) and half[0]["out"] == [128, 128]
    with pytest.raises(DataError, match="overlap"):
        TileSpec(256, overlap=256)


def test_tiles_give_back_the_embedded_pixels(scenes: dict) -> None:
    names, images = load_tiles(8, real_data_root())
    for key, recipe in (("rgb", BandRecipe()), ("cog", BandRecipe()),
                        ("ms", BandRecipe(bands=("B04", "B03", "B02"), scale="fixed", scale_args=(1000, 11200)))):
        scene = list_scenes([scenes["scenes"][key]], recipe.bands)[0]
        tiles = plan_tiles(scene, TileSpec(256))
        assert len(tiles) == 8
        rgb, reason = read_tile(scene, tiles[7], recipe)   # bottom-right: valid in every variant
        assert reason is None
        assert np.array_equal(rgb, images[7]), key


def test_nodata_tiles_are_skipped_and_counted(scenes: dict, tmp_path: Path) -> None:
    recipe = BandRecipe(bands=("B04", "B03", "B02"), scale="fixed", scale_args=(1000, 11200))
    summary = write_tiles(plan([scenes["scenes"]["ms"]], TileSpec(256), recipe), tmp_path, log=lambda _: None)
    # nodata covers rows 0..255 and columns 0..575: tiles (0,0), (0,1) fully, (0,2) 25 % → kept
    assert summary == {"scenes": 1, "tiles_planned": 8, "tiles_written": 6, "skipped_nodata": 2, "failed": 0}
    lines = [json.loads(line) for line in (tmp_path / "tiles.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(Path(p["thumbnail"]).exists() for p in lines)
    first = lines[0]
    for key in ("scene_id", "window_col", "window_row", "window_width", "window_height", "crs", "transform",
                "footprint", "footprint_wgs84", "lon_min", "lat_min", "lon_max", "lat_max", "datetime"):
        assert key in first
    assert first["datetime"].startswith("2024-06-15") and first["crs"] == "EPSG:32617"
    geo = json.loads((tmp_path / "geo.json").read_text())
    assert geo["recipe"]["scale"] == "fixed" and geo["summary"]["skipped_nodata"] == 2


def test_stac_catalog_per_band_assets_and_percentile(scenes: dict) -> None:
    recipe = BandRecipe(bands=("red", "green", "blue"), scale="percentile", scale_args=(2, 98), gamma=1.5)
    p = plan([str(Path(scenes["stac"]).parent / "s2-like" / "s2-like.json")], TileSpec(256), recipe,
             log=lambda _: None)
    scene = p.scenes[0]
    assert [Path(h).name for h, _ in scene.sources] == ["B04.tif", "B03.tif", "B02.tif"]
    assert scene.datetime.startswith("2024-08-01")
    lo, hi = recipe.stats["s2-like"][0]
    assert 1000 <= lo < hi <= 11200
    rgb, _ = read_tile(scene, p.jobs[-1]["tile"], recipe)
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0
    items = list_scenes([scenes["stac"]])  # the catalog: COG item (visual) + s2-like (first GeoTIFF asset)
    assert sorted(s.id for s in items) == ["cog-scene", "s2-like"]
    with pytest.raises(DataError, match="no band named 'B08'"):
        list_scenes([scenes["stac"]], bands=("B08", "B03", "B02"))


def test_recipe_parsing_and_errors(tmp_path: Path) -> None:
    assert parse_bands("B04,B03,B02") == ("B04", "B03", "B02") and parse_bands("3,2,1") == (3, 2, 1)
    assert parse_scale("fixed:0,10000") == ("fixed", (0.0, 10000.0))
    for bad in ("fixed:1", "percentile:2,200", "log"):
        with pytest.raises(DataError):
            parse_scale(bad)
    with pytest.raises(DataError, match="3 bands"):
        parse_bands("B1,B2")
    r = BandRecipe(scale="fixed", scale_args=(0, 100), gamma=2.0)
    out = r.apply(np.full((3, 2, 2), 25, np.uint16), np.ones((2, 2), bool), r.limits("s", np.uint16, 3))
    assert out.shape == (2, 2, 3) and int(out[0, 0, 0]) == round(255 * 0.25 ** 0.5)
    assert BandRecipe.from_dict(r.to_dict()) == r
    (tmp_path / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="cannot open"):
        list_scenes([str(tmp_path / "x.tif")])
    with pytest.raises(DataError, match="no files match"):
        list_scenes([str(tmp_path / "*.jp2")])
    plain = tmp_path / "nocrs.tif"
    import rasterio

    with rasterio.open(plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no CRS"):
        list_scenes([str(plain)])


def test_large_window_read_is_bounded(tmp_path: Path) -> None:
    """Only the tile's window is read: a 4096 x 4096 scene, one tile, far less memory than the scene."""
    import tracemalloc

    data = np.zeros((3, 4096, 4096), np.uint8)
    data[:, 1000:1256, 2000:2256] = 200
    path = write_scene(tmp_path / "big.tif", data)
    del data
    scene = list_scenes([str(path)])[0]
    tile = {"window": [2000, 1000, 256, 256], "out": [256, 256], "size": 256}
    tracemalloc.start()
    rgb, _ = read_tile(scene, tile, BandRecipe())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (rgb == 200).all() and peak < 8 * 2 ** 20   # the scene is 48 MiB


def test_archive_tile_cli_and_recipe_reuse(scenes: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tfduch.cli import main

    args = ["archive", "tile", "--scenes", scenes["scenes"]["ms"], "--bands", "B04,B03,B02", "--scale",
            "percentile:2,98", "--gamma", "1.3", "--json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["tiles_written"] == 6
    geo = json.loads((tmp_path / "a" / "geo.json").read_text())
    assert set(geo["recipe"]["stats"]) == {"ms_uint16"} and geo["recipe"]["gamma"] == 1.3
    # a later addition reuses the stored recipe (with its per-scene stretch): the same pixels
    assert main(["archive", "tile", "--scenes", scenes["scenes"]["ms"], "--recipe", str(tmp_path / "a" / "geo.json"),
                 "--out", str(tmp_path / "b"), "--json"]) == 0
    capsys.readouterr()
    a = sorted((tmp_path / "a" / "tiles").rglob("*.png"))
    b = sorted((tmp_path / "b" / "tiles").rglob("*.png"))
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert main(["archive", "tile", "--scenes", scenes["scenes"]["ms"], "--bands", "B09,B03,B02", "--out",
                 str(tmp_path / "c")]) == 2
    assert "no band named 'B09'" in capsys.readouterr().err
