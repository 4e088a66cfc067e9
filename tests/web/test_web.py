"""``tfduch web``: the HTTP API (empty, long and non-ASCII queries, thumbnails) and the page in headless Chromium.

The index is small and synthetic with planted codes: a stub model maps a caption naming a class to that
class's centre code, so the class every result must have is known in advance.
"""

from __future__ import annotations

import io
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import start_chromium
from PIL import Image

from tfduch.data.karpathy import load_dataset
from tfduch.data.synthetic import make_synthetic_dataset
from tfduch.index import ArchiveIndex
from tfduch.web.app import SearchApp, serve

BITS = 32
# beyond start_chromium's own flags: nothing in the background may reach the network
CHROMIUM_FLAGS = ("--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")


class PlantedEncoder:
    """Stub model: a caption naming a class gets that class's centre code; other text a far-away code."""

    def __init__(self, centres: np.ndarray, names: list[str]) -> None:
        self.centres, self.names = centres, names
        self.metadata = {"bits": BITS, "model_id": "planted"}
        self.seen: list[str] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = []
        for t in texts:
            hit = [i for i, n in enumerate(self.names) if n in t.lower()]
            out.append(self.centres[hit[0]] if hit else -self.centres[0])
        return np.stack(out)

    def encode_images(self, images: list) -> np.ndarray:
        raise NotImplementedError


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """A running server over 4 classes × 6 TIFF images with captions; yields (base URL, encoder, dataset)."""
    data = make_synthetic_dataset(tmp_path_factory.mktemp("web") / "data", n_classes=4, per_class=6,
                                  image_size=96, image_format="tif")
    ds = load_dataset(data)
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, 2, (ds.num_classes, BITS)) * 2 - 1).astype(np.int8)
    labels = ds.labels
    noisy = np.where(rng.random((len(ds), BITS)) < 0.06, -centres[labels], centres[labels])
    archive = ArchiveIndex.create(BITS, {"bits": BITS, "model_id": "planted"})
    ids = archive.add("image", noisy, [{"path": str(s.path), "class": s.classname, "caption": s.captions[0]}
                                       for s in ds.samples])
    archive.add("text", np.repeat(noisy, 2, axis=0),
                [{"caption": s.captions[j], "class": s.classname, "image_id": int(ids[i])}
                 for i, s in enumerate(ds.samples) for j in range(2)])
    encoder = PlantedEncoder(centres, ds.classnames)
    app = SearchApp(archive, encoder, max_query_chars=200, max_k=30)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", encoder, ds
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def api(base: str, path: str, **params: str) -> tuple[int, dict]:
    status, body, kind = get(f"{base}{path}?{urllib.parse.urlencode(params)}")
    assert kind.startswith("application/json")
    return status, json.loads(body.decode("utf-8"))


# ------------------------------------------------------------------------------------------ the API
def test_search_returns_images_of_the_named_class(site) -> None:
    base, _, ds = site
    status, res = api(base, "/api/search", q="boats in a harbor", k="6")
    assert status == 200 and res["notices"] == []
    assert [r["class"] for r in res["results"]] == ["harbor"] * 6
    assert [r["rank"] for r in res["results"]] == list(range(1, 7))
    keys = [(r["distance"], r["id"]) for r in res["results"]]
    assert keys == sorted(keys)
    status, info = api(base, "/api/info")
    assert info["counts"] == {"image": 24, "text": 48} and info["bits"] == BITS


def test_empty_long_and_non_ascii_queries(site) -> None:
    base, encoder, _ = site
    for q in ("", "   ", "\n\t"):
        status, res = api(base, "/api/search", q=q)
        assert status == 400 and "empty query" in res["error"]
    long = "forest " * 1000
    status, res = api(base, "/api/search", q=long)
    assert status == 200 and "truncated to its first 200 of 6999 characters" in res["notices"][0]
    assert len(encoder.seen[-1]) == 200 and [r["class"] for r in res["results"][:6]] == ["forest"] * 6
    status, res = api(base, "/api/search", q="forêt — forest 森林 🚀 Ünïcödé")
    assert status == 200 and res["query"] == "forêt — forest 森林 🚀 Ünïcödé"
    assert encoder.seen[-1] == "forêt — forest 森林 🚀 Ünïcödé"
    status, res = api(base, "/api/search", q="no known class here")
    assert status == 200 and len(res["results"]) == 20  # any text gets an answer


def test_k_is_validated_and_clipped(site) -> None:
    base, _, _ = site
    assert api(base, "/api/search", q="forest", k="abc")[0] == 400
    assert api(base, "/api/search", q="forest", k="0")[0] == 400
    status, res = api(base, "/api/search", q="forest", k="1000")
    assert status == 200 and len(res["results"]) == 24 and "index holds only that many" in res["notices"][0]


def test_captions_of_an_image(site) -> None:
    base, _, _ = site
    _, res = api(base, "/api/search", q="a sandy beach", k="1")
    image_id = res["results"][0]["id"]
    status, caps = api(base, "/api/captions", id=str(image_id), k="4")
    assert status == 200 and len(caps["results"]) == 4
    assert {c["class"] for c in caps["results"]} == {"beach"} and all(c["caption"] for c in caps["results"])
    assert api(base, "/api/captions", id="x")[0] == 400
    assert api(base, "/api/captions", id="12345")[0] == 400


def test_thumbnails_are_converted_and_only_for_indexed_images(site) -> None:
    base, _, ds = site
    status, body, kind = get(f"{base}/thumb/0")
    assert status == 200 and kind == "image/jpeg"
    thumb = Image.open(io.BytesIO(body))
    assert thumb.format == "JPEG" and thumb.size == (96, 96)  # the TIFF source, converted
    assert ds.samples[0].path.suffix == ".tif"
    assert get(f"{base}/thumb/0")[1] == body  # cached
    for bad in ("/thumb/999", "/thumb/abc", "/thumb/../../etc/passwd", "/static/../app.py", "/etc/passwd"):
        assert get(base + bad)[0] == 404, bad
    assert get(f"{base}/static/app.js")[0] == 200
    req = urllib.request.Request(f"{base}/api/search?q=forest", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


# ------------------------------------------------------------------------------ the page in Chromium
def artifacts_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("TFDUCH_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium("1280,1000", *CHROMIUM_FLAGS)
    yield driver
    driver.quit()


def test_page_shows_thumbnails_of_the_queried_class(site, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = site
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/")
    wait.until(lambda d: "images" in d.find_element(By.ID, "info").text)

    box = browser.find_element(By.ID, "query")
    box.send_keys("a quiet forest with tall trees")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 20)
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    classes = [c.get_attribute("data-class") for c in cards]
    assert classes[:6] == ["forest"] * 6  # all 6 forest images first, then the rest by distance
    distances = [int(c.get_attribute("data-distance")) for c in cards]
    assert distances == sorted(distances)
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                              img) for img in d.find_elements(By.CSS_SELECTOR, ".result img")))
    assert "20 images for" in browser.find_element(By.ID, "status").text

    cards[0].click()
    wait.until(ec.visibility_of_element_located((By.ID, "captions")))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#captions-list li.caption")) == 5)
    captions = browser.find_elements(By.CSS_SELECTOR, "#captions-list li.caption")
    assert {c.get_attribute("data-class") for c in captions} == {"forest"}
    shot = artifacts_dir(tmp_path) / "web_search_forest.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    box.clear()
    box.send_keys("   ")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: "Type a few words" in d.find_element(By.ID, "status").text)
    assert browser.find_elements(By.CSS_SELECTOR, ".result") == []

    box.clear()
    box.send_keys("港口 harbor ⚓ " + "x" * 400)
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: "truncated" in d.find_element(By.ID, "status").text)
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert [c.get_attribute("data-class") for c in cards[:6]] == ["harbor"] * 6
