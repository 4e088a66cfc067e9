"""``tfduch web`` over an archive in Milvus serves the same page and the same answers as over the file
index holding the same codes (one embedded server for the session)."""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
from test_web import BITS, PlantedEncoder

from tfduch.data.karpathy import load_dataset
from tfduch.data.synthetic import make_synthetic_dataset
from tfduch.index import ArchiveIndex
from tfduch.web.app import SearchApp, serve


def fill(index, ds, noisy: np.ndarray) -> None:
    ids = index.add("image", noisy, [{"path": str(s.path), "class": s.classname, "caption": s.captions[0]}
                                     for s in ds.samples])
    index.add("text", np.repeat(noisy, 2, axis=0), [{"caption": s.captions[j], "class": s.classname,
                                                     "image_id": int(ids[i])}
                                                    for i, s in enumerate(ds.samples) for j in range(2)])


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def test_web_over_milvus_equals_web_over_the_file_index(milvus_server, tmp_path) -> None:
    from tfduch.index.milvus import MilvusIndex, MilvusTarget

    ds = load_dataset(make_synthetic_dataset(tmp_path / "data", n_classes=4, per_class=6, image_size=64,
                                             image_format="png"))
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, 2, (ds.num_classes, BITS)) * 2 - 1).astype(np.int8)
    labels = ds.labels
    noisy = np.where(rng.random((len(ds), BITS)) < 0.06, -centres[labels], centres[labels])
    model = {"bits": BITS, "model_id": "planted"}
    file_index = ArchiveIndex.create(BITS, model)
    fill(file_index, ds, noisy)
    mil = MilvusIndex.create(MilvusTarget.parse("milvus://local/web", uri=milvus_server.uri), BITS, model,
                             overwrite=True)
    fill(mil, ds, noisy)
    servers, bases = [], []
    for index in (file_index, mil):
        server = serve(SearchApp(index, PlantedEncoder(centres, ds.classnames), max_query_chars=200, max_k=30),
                       "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        bases.append(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        paths = ["/", "/static/app.js", "/api/search?q=boats+in+a+harbor&k=6", "/api/search?q=forest&k=1000",
                 "/api/search?q=no+known+class", "/api/captions?id=3&k=5", "/thumb/0"]
        for path in paths:
            (s1, b1), (s2, b2) = (get(base + path) for base in bases)
            if path.startswith("/api/"):  # the same JSON, but for the server-side time it took
                b1, b2 = ({k: v for k, v in json.loads(b).items() if k != "ms"} for b in (b1, b2))
            assert (s1, b1) == (s2, b2), path
        res = json.loads(get(bases[1] + "/api/search?q=boats+in+a+harbor&k=6")[1])
        assert [r["class"] for r in res["results"]] == ["harbor"] * 6
        info = [json.loads(get(base + "/api/info")[1]) for base in bases]
        assert info[0]["counts"] == info[1]["counts"] == {"image": 24, "text": 48}
        assert info[0]["bits"] == info[1]["bits"] and info[0]["model_id"] == info[1]["model_id"]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
