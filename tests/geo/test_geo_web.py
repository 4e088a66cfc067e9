"""The search page over a geo archive: bbox/time API on FastAPI, OpenAPI, footprints on the map (Chromium)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("fastapi")

from conftest import real_data_root, start_chromium  # noqa: E402

from tfduch.geo.demo import build_scene_set  # noqa: E402
from tfduch.geo.recipe import BandRecipe  # noqa: E402
from tfduch.geo.scenes import TileSpec  # noqa: E402
from tfduch.geo.tiler import plan, write_tiles  # noqa: E402
from tfduch.index.store import ArchiveIndex  # noqa: E402
from tfduch.web.app import SearchApp, serve  # noqa: E402

BITS = 16


class GreyEncoder:
    """Codes from a 4x4 grid of tile brightness; every text query asks for "bright top-left"."""

    metadata = {"bits": BITS, "model_id": "grey-geo"}

    def encode_images(self, images: list) -> np.ndarray:
        from tfduch.data.images import load_image

        rows = []
        for path in images:
            grey = load_image(path, size=(16, 16)).mean(axis=2)
            cells = grey.reshape(4, 4, 4, 4).mean(axis=(1, 3)).ravel()
            rows.append(np.where(cells >= np.median(cells), 1, -1))
        return np.asarray(rows, np.int8).reshape(len(images), BITS)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.tile(np.where(np.arange(BITS) < 4, 1, -1), (len(texts), 1)).astype(np.int8)


@pytest.fixture(scope="module")
def geo_site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("geoweb")
    info = build_scene_set(root / "scenes", n_images=8, cols=4, data_root=real_data_root())
    write_tiles(plan([info["scenes"]["rgb"], info["scenes"]["cog"]], TileSpec(128), BandRecipe(),
                     log=lambda _: None), root / "tiles", log=lambda _: None)
    payloads = [json.loads(line) for line in (root / "tiles" / "tiles.jsonl").read_text().splitlines()]
    encoder = GreyEncoder()
    index = ArchiveIndex.create(BITS, dict(encoder.metadata))
    index.add("image", encoder.encode_images([p["thumbnail"] for p in payloads]), payloads)
    path = index.save(root / "geo.tfidx")
    app = SearchApp(index, encoder, max_k=100, index_path=path)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", payloads
    server.shutdown()
    server.server_close()


def api(base: str, path: str, **params: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_area_filter_and_openapi(geo_site) -> None:
    base, payloads = geo_site
    status, info = api(base, "/api/info")
    assert status == 200 and info["geo"] is True and info["basemap"] is None
    status, full = api(base, "/api/search", q="anything", k="64")
    assert status == 200 and all(r["footprint"] and r["scene_id"] for r in full["results"])
    # the rgb scene's tiles only (the COG lies 100 m further south)
    rgb = [p for p in payloads if p["scene_id"] == "rgb_uint8"]
    bbox = (min(p["lon_min"] for p in rgb), min(p["lat_min"] for p in rgb),
            max(p["lon_max"] for p in rgb), max(p["lat_max"] for p in rgb))
    status, res = api(base, "/api/search", q="anything", k="50", bbox=",".join(map(str, bbox)))
    assert status == 200 and {r["scene_id"] for r in res["results"]} == {"rgb_uint8"}
    assert len(res["results"]) == len(rgb)
    expected = [(r["distance"], r["id"]) for r in full["results"] if r["scene_id"] == "rgb_uint8"]
    assert [(r["distance"], r["id"]) for r in res["results"]] == expected  # the same order as unfiltered
    status, res = api(base, "/api/search", q="anything", time="2024-05-01/2024-05-01")
    assert status == 200 and {r["scene_id"] for r in res["results"]} == {"rgb_uint8"}
    assert api(base, "/api/search", q="x", bbox="1,2")[0] == 400
    status, thumb = 0, b""
    with urllib.request.urlopen(f"{base}/thumb/{res['results'][0]['id']}", timeout=10) as r:
        status, thumb = r.status, r.read()
    assert status == 200 and thumb[:2] == b"\xff\xd8"  # the tile's PNG, as JPEG
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as r:
        spec = json.loads(r.read())
    assert {"/api/search", "/api/info", "/api/captions"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "k", "bbox", "time"} <= names
    with urllib.request.urlopen(f"{base}/static/vendor/leaflet/leaflet.js", timeout=10) as r:
        assert r.status == 200 and b"Leaflet" in r.read()[:2000]


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium("1280,1100")
    yield driver
    driver.quit()


def test_map_shows_footprints_links_cards_and_filters_by_box(geo_site, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = geo_site
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/")
    wait.until(lambda d: d.find_element(By.ID, "map-panel").is_displayed())
    # nothing is fetched from outside the server: every resource is same-origin
    browser.find_element(By.ID, "query").send_keys("bright fields")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 20)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#map path.leaflet-interactive")) == 20)
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(base) for u in urls), [u for u in urls if not u.startswith(base)]

    # footprint → card
    paths = browser.find_elements(By.CSS_SELECTOR, "#map path.leaflet-interactive")
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", paths[-1])
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.selected")) == 1)
    # card → footprint (the highlighted polygon is drawn red)
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    browser.execute_script("arguments[0].click()", cards[0])
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".result.selected").get_attribute("data-id")
               == cards[0].get_attribute("data-id"))
    assert len(browser.find_elements(By.CSS_SELECTOR, '#map path[stroke="#d7301f"]')) == 1
    browser.find_element(By.ID, "close-captions").click()
    shot = Path(os.environ.get("TFDUCH_ARTIFACTS", tmp_path)) / "web_geo_map.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))

    # draw a box over the upper-left part of the map: fewer results, all inside
    browser.find_element(By.ID, "draw-box").click()
    m = browser.find_element(By.ID, "map")
    w, h = m.size["width"], m.size["height"]
    ActionChains(browser).move_to_element_with_offset(m, -w // 2 + 5, -h // 2 + 5).click_and_hold() \
        .move_by_offset(w // 2, h // 2).release().perform()
    wait.until(lambda d: "area filter:" in d.find_element(By.ID, "bbox-text").text)
    wait.until(lambda d: " in the area " in d.find_element(By.ID, "status").text)
    assert browser.find_elements(By.CSS_SELECTOR, ".result")
    bbox = [float(v) for v in browser.find_element(By.ID, "bbox-text").text.split(":")[1].split(",")]
    status, res = api(base, "/api/search", q="bright fields", k="20", bbox=",".join(map(str, bbox)))
    assert [str(r["id"]) for r in res["results"]] == \
        [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".result")]
    import shapely

    box = shapely.box(*bbox)
    assert all(shapely.intersects(shapely.Polygon(r["footprint"]), box) for r in res["results"])
    status, every = api(base, "/api/search", q="bright fields", k="64")
    outside = [r for r in every["results"] if not shapely.intersects(shapely.Polygon(r["footprint"]), box)]
    assert outside and not {r["id"] for r in outside} & {r["id"] for r in res["results"]}
    browser.save_screenshot(str(shot.with_name("web_geo_map_filtered.png")))
