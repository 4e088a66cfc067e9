"""Geo archive end to end (Beam tiles → shards → index → area/time search) and the exact area filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("apache_beam")

from conftest import PixelEncoder, real_data_root  # noqa: E402

from tfduch.archive import shards as fmt  # noqa: E402
from tfduch.archive.beam import EncoderSpec, encode_archive, pipeline_options  # noqa: E402
from tfduch.cli import main  # noqa: E402
from tfduch.errors import DataError  # noqa: E402
from tfduch.geo.demo import build_scene_set  # noqa: E402
from tfduch.geo.recipe import BandRecipe  # noqa: E402
from tfduch.geo.scenes import TileSpec  # noqa: E402
from tfduch.geo.spatial import GeoFilter, hamming_rank, parse_bbox, parse_time  # noqa: E402
from tfduch.geo.tiler import plan  # noqa: E402


def geo_encoder() -> PixelEncoder:
    return PixelEncoder("pixels-geo")


@pytest.fixture(scope="module")
def geo_index(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tfduch.index.from_shards import build_from_shards

    root = tmp_path_factory.mktemp("geoarchive")
    info = build_scene_set(root / "scenes", n_images=8, cols=4, data_root=real_data_root())
    recipe = BandRecipe(bands=("B04", "B03", "B02"), scale="fixed", scale_args=(1000, 11200))
    tiles = plan([info["scenes"]["ms"]], TileSpec(128), recipe, thumbnails=str(root / "thumbs"), log=lambda _: None)
    tiles_rgb = plan([info["scenes"]["rgb"], info["scenes"]["cog"]], TileSpec(128), BandRecipe(), log=lambda _: None)
    tiles.scenes += tiles_rgb.scenes
    tiles.keys += tiles_rgb.keys
    tiles.jobs += tiles_rgb.jobs
    result = encode_archive([info["scenes"]["ms"]], str(root / "shards"), EncoderSpec(factory=geo_encoder),
                            shard_size=20, batch_size=8, options=pipeline_options(direct_mode="in_memory"),
                            progress_interval=60, log=lambda _: None, tiles=tiles)
    build_from_shards(root / "shards", root / "geo.tfidx")
    return {"root": root, "info": info, "result": result, "tiles": tiles}


def test_beam_tiles_payloads_and_skips(geo_index: dict) -> None:
    result, tiles = geo_index["result"], geo_index["tiles"]
    # ms scene 1024x512 at 128 px = 32 tiles, nodata covers rows 0..255 x cols 0..575 → 2 x 4 tiles skipped;
    # the tiles at column 512 are half nodata (not more than the 0.5 limit) and kept
    assert len(tiles.jobs) == 96
    assert result.dead == 8 and result.items == 88
    assert result.manifest["dead_letter_reasons"] == {"skipped": 8}
    assert result.manifest["geo"]["recipe"]["scale"] == "fixed"
    payloads = [p for s in fmt.iter_shards(geo_index["root"] / "shards") for p in s.payloads]
    assert all("footprint_wgs84" in p and "scene_id" in p for p in payloads)
    thumbs = [p["thumbnail"] for p in payloads if p.get("thumbnail")]
    assert len(thumbs) == 32 - 8 and all(Path(t).exists() for t in thumbs)
    # resume: a second run skips every shard; another recipe in the same folder is refused
    again = encode_archive([geo_index["info"]["scenes"]["ms"]], str(geo_index["root"] / "shards"),
                           EncoderSpec(factory=geo_encoder), shard_size=20, options=pipeline_options(
                               direct_mode="in_memory"), log=lambda _: None, tiles=tiles)
    assert again.written == [] and len(again.skipped) == result.num_shards
    tiles.recipe.gamma = 2.0
    try:
        with pytest.raises(fmt.ShardError, match="band recipe"):
            encode_archive(["x"], str(geo_index["root"] / "shards"), EncoderSpec(factory=geo_encoder),
                           shard_size=20, options=pipeline_options(direct_mode="in_memory"), log=lambda _: None,
                           tiles=tiles)
    finally:
        tiles.recipe.gamma = 1.0


def _search(capsys: pytest.CaptureFixture, *args: str) -> object:
    assert main(["search", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_bbox_equals_brute_force(geo_index: dict, capsys: pytest.CaptureFixture) -> None:
    from tfduch.index.store import load_index

    index_path = geo_index["root"] / "geo.tfidx"
    coll = load_index(index_path).collection("image")
    payloads = coll.payloads_of(coll.ids)
    lons = np.array([(p["lon_min"] + p["lon_max"]) / 2 for p in payloads])
    lats = np.array([(p["lat_min"] + p["lat_max"]) / 2 for p in payloads])
    bbox = (float(lons.min()) - 1e-5, float(np.median(lats)), float(np.median(lons)), float(lats.max()) + 1e-5)
    code = coll.codes[5].tobytes().hex()
    out = _search(capsys, "--index", str(index_path), "--code", code, "-k", "7", "--bbox=" + ",".join(map(str, bbox)),
                  "--json")
    got = [(h["distance"], h["id"]) for h in out[0]["results"]]
    # brute force: every item whose footprint polygon intersects the box, ranked by (distance, id)
    import shapely

    box = shapely.box(*bbox)
    inside = [i for i, p in zip(coll.ids, payloads, strict=True)
              if shapely.intersects(shapely.Polygon(p["footprint_wgs84"]), box)]
    assert 7 < len(inside) < len(coll.ids)
    q = np.unpackbits(coll.codes[5])
    dist = {int(i): int((np.unpackbits(coll.codes[int(i)]) != q).sum()) for i in inside}
    assert got == sorted((d, i) for i, d in dist.items())[:7]
    assert Path(str(index_path) + ".geo.npz").exists()  # the filter is cached beside the index

    # time: only the ms scene (2024-06-15) and the rgb scene (2024-05-01) have times; the COG has none
    t = _search(capsys, "--index", str(index_path), "--code", code, "-k", "80", "--time", "2024-06-01/..",
                "--bbox=-180,-90,180,90", "--json")
    assert {h["scene_id"] for h in t[0]["results"]} == {"ms_uint16"} and len(t[0]["results"]) == 32 - 8

    gj = _search(capsys, "--index", str(index_path), "--code", code, "-k", "3", "--bbox=" + ",".join(map(str, bbox)),
                 "--format", "geojson")
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 3
    f = gj["features"][0]
    assert f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"][0]) == 5
    assert {"rank", "distance", "scene_id", "window", "thumbnail"} <= set(f["properties"])
    stac = _search(capsys, "--index", str(index_path), "--code", code, "-k", "3", "--format", "stac",
                   "--bbox=" + ",".join(map(str, bbox)))
    import pystac

    items = pystac.ItemCollection.from_dict(stac)
    assert len(items) == 3 and all(i.geometry and i.bbox for i in items)

    assert main(["search", "--index", str(index_path), "--code", code, "--bbox=1,2,3"]) == 2
    assert "want four numbers" in capsys.readouterr().err
    far = _search(capsys, "--index", str(index_path), "--code", code, "--bbox=10,10,11,11", "--json")
    assert far[0]["results"] == []


def test_filter_exact_on_random_tiles() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    centre = rng.uniform([-10, 40], [10, 50], (n, 2))
    half = rng.uniform(0.001, 0.05, (n, 1))
    ring = np.stack([centre + half * np.array(c) for c in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1))], 1)
    times = rng.uniform(1.6e9, 1.7e9, n)
    times[::7] = np.nan
    ids = np.arange(n) * 3 + 1
    flt = GeoFilter(ids, ring, times)
    bbox = parse_bbox("-2,44,0.5,45.5")
    when = parse_time("2021-01-01/2022-12-31")
    got = flt.select(bbox, when)
    lo, hi = ring.min(1), ring.max(1)
    brute = ids[(lo[:, 0] <= bbox[2]) & (hi[:, 0] >= bbox[0]) & (lo[:, 1] <= bbox[3]) & (hi[:, 1] >= bbox[1])
                & (times >= when[0]) & (times <= when[1])]
    assert len(got) > 50 and np.array_equal(got, brute)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    q = codes[:2]
    pos = (got - 1) // 3
    top, dist = hamming_rank(codes[pos], got, q, 10)
    full = np.unpackbits(codes[pos], axis=1)
    for qi in range(2):
        d = (full != np.unpackbits(q[qi])).sum(1)
        order = np.lexsort((got, d))[:10]
        assert np.array_equal(top[qi], got[order]) and np.array_equal(dist[qi], d[order])
    with pytest.raises(DataError):
        parse_time("2022-01-01/2021-01-01")
