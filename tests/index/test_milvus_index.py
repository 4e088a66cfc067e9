"""The ``milvus`` backend against ONE embedded Milvus server (session fixture ``milvus_server``).

Every answer is compared with the ``flat`` file index over the same codes: BIN_FLAT must return the same
ids and distances, ties included (the tie rule: (distance, id)).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import fail_on_call

from tfduch.cli import main
from tfduch.eval.ranking import pack_codes
from tfduch.index import ArchiveIndex, IncompatibleIndexError, IndexFileError, SearchError
from tfduch.index.code_shards import write_manifest, write_shard
from tfduch.index.searcher import Searcher

MODEL = {"bits": 16, "model_id": "m-milvus", "method": "duch"}


def pm1(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return (rng.integers(0, 2, (n, bits)) * 2 - 1).astype(np.int8)


def target(server, name: str):
    from tfduch.index.milvus import MilvusTarget

    return MilvusTarget.parse(f"milvus://local/{name}", uri=server.uri)


def both(server, name: str, codes: np.ndarray, model: dict, **params):
    """The same codes and payloads in Milvus and in a flat file index (image collections only: each Milvus
    collection costs seconds to create and load)."""
    from tfduch.index.milvus import MilvusIndex

    payloads = [{"path": f"/a/{i}.tif", "class": f"c{i % 3}", "scene_id": f"s{i // 4}"} for i in range(len(codes))
                ] if len(codes) <= 5000 else None  # big collections: codes only (payload encoding is not under test)
    mil = MilvusIndex.create(target(server, name), codes.shape[1], model, overwrite=True, collections=("image",),
                             **params)
    mil.add("image", codes, payloads)
    ref = ArchiveIndex.create(codes.shape[1], model)
    ref.add("image", codes, payloads)
    return mil, ref


def assert_same(mil, ref, queries: np.ndarray, k: int, collection: str = "image") -> None:
    got = mil.collection(collection).search(queries, k)
    want = ref.collection(collection).search(queries, k)
    np.testing.assert_array_equal(got[1], want[1])  # distances
    np.testing.assert_array_equal(got[0], want[0])  # ids: ties by id


def test_build_search_add_remove_and_refuse_mismatch(milvus_server) -> None:
    from tfduch.index.milvus import MilvusIndex, open_milvus

    rng = np.random.default_rng(0)
    codes = pm1(rng, 8, 16)[rng.integers(0, 8, 1500)]  # 8 distinct codes: every answer is a big tie
    mil, ref = both(milvus_server, "api", codes, MODEL)
    queries = np.concatenate([codes[:5], pm1(rng, 5, 16)])
    for k in (1, 20, 300):
        assert_same(mil, ref, queries, k)
    hits, want = mil.search(queries[:2], 5), ref.search(queries[:2], 5)
    assert [[h.to_dict() for h in row] for row in hits] == [[h.to_dict() for h in row] for row in want]

    # reopen by location; add and remove keep answering exactly like the file index
    again = open_milvus("milvus://local/api", uri=milvus_server.uri, model=MODEL)
    more = pm1(rng, 40, 16)
    assert again.add("image", more, [{"path": f"/b/{i}"} for i in range(40)]).tolist() == list(range(1500, 1540))
    ref.add("image", more, [{"path": f"/b/{i}"} for i in range(40)])
    assert again.remove("image", [0, 3, 1501]) == 3
    ref.remove("image", [0, 3, 1501])
    assert len(again.collection("image")) == len(ref.collection("image")) == 1537
    assert_same(again, ref, queries, 50)
    np.testing.assert_array_equal(again.collection("image").code(7), ref.collection("image").code(7))
    assert again.collection("image").payload(1539) == {"path": "/b/39"}
    with pytest.raises(SearchError, match="1 id"):
        again.remove("image", [0])
    with pytest.raises(SearchError, match="k=5000 is larger than the collection"):
        again.collection("image").search(queries, 5000)

    # a mismatched model is refused exactly as the file index refuses it
    other = {"bits": 16, "model_id": "someone-else"}
    with pytest.raises(IncompatibleIndexError, match="codes of different models are not comparable"):
        open_milvus("milvus://local/api", uri=milvus_server.uri, model=other)

    class Enc:
        metadata = {"bits": 32, "model_id": "m-milvus"}

    with pytest.raises(IncompatibleIndexError, match="holds 16-bit codes"):
        Searcher(again, Enc())
    with pytest.raises(IndexFileError, match="exists"):
        MilvusIndex.create(target(milvus_server, "api"), 16, MODEL)
    with pytest.raises(IndexFileError, match="no archive 'nothing_here'"):
        open_milvus("milvus://local/nothing_here", uri=milvus_server.uri)
    with pytest.raises(SearchError, match="bad Milvus location"):
        open_milvus("milvus://local/a/b", uri=milvus_server.uri)


def test_bin_flat_equals_flat_on_100k_codes_and_huge_ties(milvus_server) -> None:
    rng = np.random.default_rng(1)
    model = {"bits": 64, "model_id": "m64"}
    centres = pm1(rng, 50, 64)  # clustered, like learned codes, plus uniform noise codes
    codes = centres[rng.integers(0, 50, 100_000)]
    flip = rng.random(codes.shape) < 0.08
    codes = np.where(flip, -codes, codes).astype(np.int8)
    codes[::10] = pm1(rng, 10_000, 64)
    mil, ref = both(milvus_server, "big", codes, model)
    queries = np.concatenate([codes[rng.integers(0, len(codes), 20)], pm1(rng, 10, 64)])
    assert_same(mil, ref, queries, 20)
    assert_same(mil, ref, queries[:5], 1000)

    # more codes tie at the k-th distance than Milvus' top-k limit (16384): filled by a scan in id order
    tied = np.repeat(pm1(rng, 1, 8), 17_000, axis=0)
    tied[::1000] = -tied[::1000]
    mil, ref = both(milvus_server, "ties", tied, {"bits": 8, "model_id": "m8"})
    assert_same(mil, ref, tied[1:3], 10)
    assert mil.collection("image").search(tied[1:2], 3)[0].tolist() == [[1, 2, 3]]


def test_bin_ivf_flat_recall(milvus_server) -> None:
    rng = np.random.default_rng(2)
    centres = pm1(rng, 16, 32)
    codes = centres[rng.integers(0, 16, 20_000)]
    codes = np.where(rng.random(codes.shape) < 0.05, -codes, codes).astype(np.int8)
    model = {"bits": 32, "model_id": "m32"}
    queries = codes[rng.integers(0, len(codes), 30)]
    ivf, ref = both(milvus_server, "ivf", codes, model, index_type="BIN_IVF_FLAT", nlist=16, nprobe=16)
    assert not ivf.collection("image").backend.exact
    got, want = ivf.collection("image").search(queries, 20), ref.collection("image").search(queries, 20)
    np.testing.assert_array_equal(got[1], want[1])  # all cells probed: the exact distances
    ivf.params["nprobe"] = 1  # one of 16 cells: approximate
    got = ivf.collection("image").search(queries, 20)[0]
    recall = np.mean([len(set(g) & set(w)) / 20 for g, w in zip(got, want[0], strict=True)])
    assert 0.0 < recall <= 1.0
    with pytest.raises(SearchError, match="index_type must be one of"):
        both(milvus_server, "ivf2", codes[:10], model, index_type="HNSW")


def write_archive(folder: Path, codes: np.ndarray, sizes: list[int]) -> Path:
    start = 0
    for i, n in enumerate(sizes):
        payloads = [{"path": f"/archive/{r}.tif", "id": r, "class": f"c{r % 3}",
                     "captions": [f"caption {j} of {r}" for j in range(r % 3)]} for r in range(start, start + n)]
        write_shard(folder, i, len(sizes), pack_codes(codes[start : start + n]), [p["path"] for p in payloads],
                    payloads)
        start += n
    write_manifest(folder, {"bits": codes.shape[1], "model_id": "m-archive", "num_shards": len(sizes),
                            "model": {"bits": codes.shape[1], "model_id": "m-archive"}})
    return folder


class CaptionEncoder:
    """Stub model: a caption's code is the code of the item its last word names."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        self.metadata = {"bits": codes.shape[1], "model_id": "m-archive"}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.codes[int(t.split()[-1])] for t in texts])

    def encode_images(self, images: list) -> np.ndarray:
        raise AssertionError("archive images are already encoded")


def test_from_shards_cli_resume_and_remove(milvus_server, tmp_path: Path, capsys, monkeypatch) -> None:
    from tfduch.index import milvus as mv
    from tfduch.index.from_shards import build_from_shards

    monkeypatch.setenv("TFDUCH_MILVUS_URI", milvus_server.uri)
    rng = np.random.default_rng(3)
    codes = pm1(rng, 6, 32)[rng.integers(0, 6, 900)]
    folder = write_archive(tmp_path / "codes", codes, [300, 300, 300])
    build_from_shards(folder, tmp_path / "one.tfidx", encoder=CaptionEncoder(codes))  # the file index reference

    # a bulk load that fails part-way is resumed with --resume: same ids, upserts, no duplicates
    monkeypatch.setattr(mv, "_WRITE_BATCH", 100)
    real = fail_on_call(monkeypatch, mv.MilvusCollection, "add", 2,
                        mv.MilvusUnavailableError("injected: the server went away"))
    with pytest.raises(mv.MilvusUnavailableError, match="injected"):
        build_from_shards(folder, "milvus://local/shards", encoder=CaptionEncoder(codes), milvus={"overwrite": True})
    monkeypatch.setattr(mv.MilvusCollection, "add", real)
    out = "milvus://local/shards"
    assert main(["index", "build", "--from-shards", str(folder), "--out", out]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    build_from_shards(folder, out, encoder=CaptionEncoder(codes), milvus={"resume": True})
    capsys.readouterr()
    index = mv.open_milvus(out)
    assert len(index.collection("image")) == 900 and len(index.collection("text")) == 900  # 0+1+2 per 3 items
    assert index.collection("text").next_id == 900

    # the CLI: search by code gives the file index's JSON, images and captions
    code = pack_codes(codes[5:6])[0].tobytes().hex()
    answers = []
    for where in (str(tmp_path / "one.tfidx"), out):
        for coll in ("image", "text"):
            assert main(["search", "--code", code, "--index", where, "-k", "150", "--json", "--target", coll]) == 0
            answers.append(json.loads(capsys.readouterr().out))
    assert answers[:2] == answers[2:]
    assert main(["index", "info", "--index", out]) == 0
    info = capsys.readouterr().out
    assert "Milvus at " + milvus_server.uri in info and "image      900 items" in info
    # removing an image removes its captions (found by image_id)
    assert main(["index", "remove", "--index", out, "--ids", "2", "5"]) == 0
    assert "removed 2 image items, 4 text items" in capsys.readouterr().out
    assert len(mv.open_milvus(out).collection("text")) == 896


def test_server_killed_mid_search_errors_then_recovers(milvus_server) -> None:
    """The session's server is killed (SIGKILL) during searches: each search either returns the exact answer
    or raises MilvusUnavailableError naming the server; after a restart the same answer comes back."""
    from tfduch.index.milvus import MilvusIndex, MilvusTarget, MilvusUnavailableError, open_milvus

    rng = np.random.default_rng(4)
    codes = pm1(rng, 20_000, 32)
    model = {"bits": 32, "model_id": "k"}
    tgt = MilvusTarget.parse("milvus://local/kill", uri=milvus_server.uri, retries=1, retry_wait=0.2, timeout=5)
    mil = MilvusIndex.create(tgt, 32, model, overwrite=True, collections=("image",))
    mil.add("image", codes)
    ref = ArchiveIndex.create(32, model)
    ref.add("image", codes)
    queries = codes[:200]
    want = ref.collection("image").search(queries, 20)
    outcomes: list[object] = []

    def search_loop() -> None:
        for _ in range(50):
            try:
                outcomes.append(mil.collection("image").search(queries, 20))
            except MilvusUnavailableError as exc:
                outcomes.append(exc)
                return

    thread = threading.Thread(target=search_loop)
    thread.start()
    threading.Event().wait(1.0)
    uri = milvus_server.uri
    try:
        milvus_server.kill()
        thread.join(120)
    finally:  # restart on the same data for the tests that follow (the port may change)
        milvus_server.port = None
        milvus_server.start()
    assert outcomes and isinstance(outcomes[-1], MilvusUnavailableError)
    assert uri in str(outcomes[-1]) and "nothing was returned" in str(outcomes[-1])
    for got in outcomes[:-1]:  # whatever completed before the kill is exact
        np.testing.assert_array_equal(got[0], want[0])  # type: ignore[index]
    again = open_milvus("milvus://local/kill", uri=milvus_server.uri)  # durable: the same answer
    got = again.collection("image").search(queries, 20)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_open_location_accepts_path_folded_uris(milvus_server) -> None:
    """``tfduch web --index milvus://…`` arrives as a Path (``milvus:/…``): still a Milvus location."""
    from tfduch.index.cli import open_location
    from tfduch.index.milvus import MilvusTarget, is_milvus_location

    assert is_milvus_location(Path("milvus://localhost:19530/archive"))
    assert not is_milvus_location(Path("archive.tfidx"))
    t = MilvusTarget.parse(Path("milvus://db.example:19531/archive"))
    assert (t.uri, t.archive) == ("http://db.example:19531", "archive") or os.environ.get("TFDUCH_MILVUS_URI")
    assert MilvusTarget.parse("milvus+https://db.example/a").uri in ("https://db.example:19530",
                                                                     os.environ.get("TFDUCH_MILVUS_URI"))
    rng = np.random.default_rng(5)
    both(milvus_server, "loc", pm1(rng, 50, 16), MODEL)
    args = argparse.Namespace(milvus_uri=milvus_server.uri, milvus_token=None, milvus_ca_pem=None)
    index = open_location(Path("milvus://local/loc"), args)
    assert len(index.collection("image")) == 50


@pytest.mark.slow
@pytest.mark.realdata
def test_bin_flat_equals_flat_on_ucm_codes(ucm_root, milvus_server) -> None:
    """Codes of the real UCM split from the trained baseline run: text→image and image→image top-k."""
    run = Path(os.environ.get("TFDUCH_RUN", Path(__file__).resolve().parents[3] / "runs" / "baseline"))
    if not (run / "model.json").is_file():
        pytest.skip(f"no trained run at {run} (set TFDUCH_RUN)")
    import dataclasses

    from tfduch.pipeline import encode_retrieval_sets, load_trained, prepare

    cfg, model, meta = load_trained(run)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(ucm_root)))  # run from any cwd
    codes = encode_retrieval_sets(model, prepare(cfg, progress=False))
    bits = codes["database_image"].shape[1]
    mdl = {"bits": bits, "model_id": "ucm"}
    mil, ref = both(milvus_server, "ucm", codes["database_image"], mdl)
    for q in (codes["query_text"], codes["query_image"]):
        for k in (20, 100):
            assert_same(mil, ref, q, k)
