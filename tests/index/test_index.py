"""The archive index: exact, deterministic rankings; updates; persistence; and every bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tfduch.eval.ranking import hamming_distances, hamming_rank, pack_codes
from tfduch.index import (
    ArchiveIndex,
    HammingIndex,
    IncompatibleIndexError,
    IndexFileError,
    SearchError,
    exact_topk,
    load_index,
)
from tfduch.index import backends as backends_module
from tfduch.index.payload import PayloadStore
from tfduch.index.searcher import Searcher
from tfduch.index.store import _read_header


@pytest.fixture(autouse=True, scope="module")
def single_thread_faiss():
    """faiss' OpenMP threads spin against each other on a loaded 2-core machine; one thread is faster here."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


MODEL = {"bits": 32, "model_id": "model-a", "source": {"kind": "run", "path": "/runs/a"}}


def pm1(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return (rng.integers(0, 2, (n, bits)) * 2 - 1).astype(np.int8)


def clustered(rng: np.random.Generator, n: int, bits: int, centres: int | np.ndarray = 8, flip: float = 0.08,
              duplicates: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Codes near a few centres (as learned codes are); ``duplicates`` makes many codes identical.

    ``centres`` is a count (fresh random centres, seeded by ``rng``) or the centre codes themselves.
    """
    c = pm1(rng, centres, bits) if isinstance(centres, int) else centres
    labels = rng.integers(0, len(c), n)
    flips = rng.random((n, bits)) < (0.0 if duplicates else flip)
    return np.where(flips, -c[labels], c[labels]).astype(np.int8), labels


def brute_force(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference ranking: numpy distances, ties by index (tfduch.eval)."""
    ids = hamming_rank(q, db, topk=k)
    return ids, np.take_along_axis(hamming_distances(q, db), ids, axis=1)


# --------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("backend", ["flat", "mih"])
@pytest.mark.parametrize("bits", [16, 32, 64, 128])
def test_exact_backends_match_brute_force_with_ties(backend: str, bits: int) -> None:
    rng = np.random.default_rng(bits)
    centres = pm1(rng, 8, bits)
    db = np.concatenate([clustered(rng, 1500, bits, centres, duplicates=True)[0],
                         clustered(rng, 1500, bits, centres)[0], pm1(rng, 500, bits)])
    q = np.concatenate([clustered(rng, 10, bits, centres)[0], pm1(rng, 10, bits)])
    index = HammingIndex(bits, backend)
    index.add(db)
    for k in (1, 7, 20, 300, len(db)):
        ids, dist = index.search(q, k)
        ref_ids, ref_dist = brute_force(q, db, k)
        np.testing.assert_array_equal(dist, ref_dist)
        np.testing.assert_array_equal(ids, ref_ids)  # ties at the k-th distance resolved by id


def test_uncertified_ties_are_filled_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where faiss' heap order is not trusted (another faiss), the certificate + tie scan decide."""
    rng = np.random.default_rng(0)
    db = pack_codes(clustered(rng, 200_000, 64, centres=3, duplicates=True)[0])  # ~67k copies of each code
    q = pack_codes(pm1(rng, 4, 64))
    monkeypatch.setattr(backends_module, "_TIES_BY_POSITION", False)
    calls = []
    real = backends_module._fill_ties
    monkeypatch.setattr(backends_module, "_fill_ties", lambda *a: calls.append(a[2]) or real(*a))
    dist, pos = exact_topk(db, q, 25, margin=0)
    assert calls, "the certificate should have failed and the tie scan run"
    ref_ids, ref_dist = brute_force(np.unpackbits(q, axis=1), np.unpackbits(db, axis=1), 25)
    np.testing.assert_array_equal(pos, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)


def test_fast_path_is_exact_under_heavy_ties() -> None:
    """The kernel asked for exactly k (this faiss passes the probe) gives the (distance, id) ranking."""
    assert backends_module.heap_ties_by_position()
    rng = np.random.default_rng(3)
    db = pack_codes(clustered(rng, 50_000, 64, centres=4, duplicates=True)[0])
    q = pack_codes(pm1(rng, 3, 64))
    for k in (1, 20, 777):
        dist, pos = exact_topk(db, q, k)
        ref_ids, ref_dist = brute_force(np.unpackbits(q, axis=1), np.unpackbits(db, axis=1), k)
        np.testing.assert_array_equal(pos, ref_ids)
        np.testing.assert_array_equal(dist, ref_dist)


def test_search_accepts_pm1_bits_and_packed_queries() -> None:
    rng = np.random.default_rng(1)
    db, q = pm1(rng, 300, 32), pm1(rng, 3, 32)
    index = HammingIndex(32)
    index.add(pack_codes(db))
    a = index.search(q, 5)
    b = index.search((q > 0).astype(np.uint8), 5)  # 0/1 bits
    c = index.search(pack_codes(q), 5)
    for other in (b, c):
        np.testing.assert_array_equal(a[0], other[0])


@pytest.mark.parametrize("backend", ["hnsw", "ivf"])
def test_approximate_backends_have_high_recall_on_clustered_codes(backend: str) -> None:
    rng = np.random.default_rng(2)
    centres = pm1(rng, 16, 64)
    db, _ = clustered(rng, 4000, 64, centres, flip=0.05)
    q, _ = clustered(rng, 30, 64, centres, flip=0.05)
    index = HammingIndex(64, backend)
    index.add(db)
    ids, dist = index.search(q, 10)
    ref_ids, ref_dist = brute_force(q, db, 10)
    # recall measured on distances (ties make id sets ambiguous): the k-th distance is what matters
    assert np.mean(dist[:, -1] <= ref_dist[:, -1]) >= 0.9
    assert np.all(np.diff(dist, axis=1) >= 0)
    same_d = np.diff(dist, axis=1) == 0
    assert np.all(np.diff(ids, axis=1)[same_d] > 0), "equal distances must come in id order"


# ------------------------------------------------------------------------------------------ updates
@pytest.mark.parametrize("backend", ["flat", "mih", "hnsw"])
def test_add_and_remove_without_rebuild(backend: str) -> None:
    rng = np.random.default_rng(3)
    centres = pm1(rng, 6, 32)
    db = clustered(rng, 2000, 32, centres)[0]
    q = clustered(rng, 8, 32, centres)[0]
    index = HammingIndex(32, backend)
    first = index.add(db[:1200], [{"n": i} for i in range(1200)])
    second = index.add(db[1200:], [{"n": i} for i in range(1200, 2000)])
    np.testing.assert_array_equal(np.concatenate([first, second]), np.arange(2000))
    gone = rng.choice(2000, 300, replace=False)
    assert index.remove(gone.tolist()) == 300
    assert len(index) == 1700
    assert (index.num_removed == 0) == (backend == "flat")  # flat compacts, others keep tombstones
    keep = np.setdiff1d(np.arange(2000), gone)
    ids, dist = index.search(q, 15)
    assert not np.isin(ids, gone).any()
    if backend != "hnsw":
        ref_ids, ref_dist = brute_force(q, db[keep], 15)
        np.testing.assert_array_equal(ids, keep[ref_ids])
    assert index.payload(int(ids[0, 0])) == {"n": int(ids[0, 0])}
    new = index.add(db[:5])
    np.testing.assert_array_equal(new, np.arange(2000, 2005))  # ids are never reused
    index.compact()
    assert index.num_removed == 0 and len(index) == 1705


def test_remove_is_all_or_nothing() -> None:
    index = HammingIndex(16)
    index.add(pm1(np.random.default_rng(4), 10, 16))
    with pytest.raises(SearchError, match="not in the collection: 99"):
        index.remove([2, 99])
    assert len(index) == 10
    index.remove([2])
    with pytest.raises(SearchError, match="2"):
        index.remove([2])


# ------------------------------------------------------------------------------------ persistence
CENTRES = pm1(np.random.default_rng(99), 5, 32)


def make_archive(rng: np.random.Generator, backend: str = "flat", n: int = 500) -> ArchiveIndex:
    archive = ArchiveIndex.create(32, MODEL, backend)
    codes, labels = clustered(rng, n, 32, CENTRES)
    archive.add("image", codes, [{"path": f"/archive/{i}.tif", "class": f"c{c}"} for i, c in enumerate(labels)])
    archive.add("text", codes[:50], [{"caption": f"ünïcode caption {i} 飛行機", "image_id": i} for i in range(50)])
    return archive


@pytest.mark.parametrize("backend", ["flat", "mih", "hnsw", "ivf"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, backend: str, mmap: bool) -> None:
    rng = np.random.default_rng(5)
    archive = make_archive(rng, backend)
    archive.remove("image", [3, 4])
    q = clustered(rng, 6, 32, CENTRES)[0]
    before = archive.collection("image").search(q, 12)
    path = archive.save(tmp_path / "a.tfidx")
    loaded = load_index(path, mmap=mmap, model=MODEL)
    image = loaded.collection("image")
    assert isinstance(image.codes, np.memmap) == mmap
    after = image.search(q, 12)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert loaded.collection("text").payload(7) == {"caption": "ünïcode caption 7 飛行機", "image_id": 7}
    meta = loaded.metadata
    assert meta["bits"] == 32 and meta["model_id"] == "model-a" and meta["count"] == {"image": 498, "text": 50}
    assert meta["backend"]["name"] == backend and len(meta["checksum"]) == 64
    # an mmap-loaded index can still be updated and saved over itself
    loaded.add("image", q[:2], [{"path": "new"}] * 2)
    loaded.save()
    assert len(load_index(path).collection("image")) == 500


def test_flat_index_is_searched_in_place_from_the_memory_map(tmp_path: Path) -> None:
    archive = make_archive(np.random.default_rng(6))
    loaded = load_index(archive.save(tmp_path / "a.tfidx"), mmap=True)
    codes = loaded.collection("image").codes
    assert isinstance(codes, np.memmap) and not codes.flags.writeable
    ids, _ = loaded.collection("image").search(codes[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])


def test_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    path = make_archive(rng).save(tmp_path / "a.tfidx")
    original = path.read_bytes()
    bigger = make_archive(rng, n=800)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfidx"]  # no temporary file left


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_truncated_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = make_archive(np.random.default_rng(8)).save(tmp_path / "a.tfidx")
    good = path.read_bytes()
    header, data_start, _ = _read_header(path)
    _corrupt(path, data_start + header["collections"]["image"]["sections"]["codes"]["offset"] + 5)
    with pytest.raises(IndexFileError, match="corrupt: checksum mismatch in section image/codes"):
        load_index(path)
    assert len(load_index(path, verify=False).collection("image")) == 500  # verify=False skips the hashes
    path.write_bytes(good)
    _corrupt(path, len(good) - 3)  # the last payload offset: caught by the structure check too
    with pytest.raises(IndexFileError, match="a.tfidx.*payload offsets"):
        load_index(path, verify=False)
    path.write_bytes(good)
    _corrupt(path, 70)  # inside the header
    with pytest.raises(IndexFileError, match="header checksum"):
        load_index(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        load_index(path)
    path.write_bytes(b"PK\x03\x04 not an index")
    with pytest.raises(IndexFileError, match="not a tfduch index"):
        load_index(path)
    with pytest.raises(IndexFileError, match="not found"):
        load_index(tmp_path / "missing.tfidx")


def test_mismatched_model_or_code_length_is_refused(tmp_path: Path) -> None:
    path = make_archive(np.random.default_rng(9)).save(tmp_path / "a.tfidx")
    with pytest.raises(IncompatibleIndexError, match="holds 32-bit codes .* produces 64-bit"):
        load_index(path, model={"bits": 64, "model_id": "model-a"})
    with pytest.raises(IncompatibleIndexError, match="built with model model-a .* model-b"):
        load_index(path, model={"bits": 32, "model_id": "model-b", "source": {"path": "/runs/b"}})
    assert load_index(path, model=MODEL).model_id == "model-a"


# ------------------------------------------------------------------------------------- bad searches
def test_bad_k_empty_collection_and_bad_codes_are_clear_errors() -> None:
    index = HammingIndex(32)
    q = pm1(np.random.default_rng(10), 1, 32)
    with pytest.raises(SearchError, match="empty"):
        index.search(q, 5)
    index.add(pm1(np.random.default_rng(11), 10, 32))
    for k, message in ((0, ">= 1"), (-3, ">= 1"), (11, "larger than the collection \\(10 items\\)"),
                       (2.5, "integer"), (True, "integer")):
        with pytest.raises(SearchError, match=message):
            index.search(q, k)
    with pytest.raises(SearchError, match="64 columns .* 32-bit"):
        index.search(pm1(np.random.default_rng(12), 1, 64), 3)
    assert index.search(q, 10)[0].shape == (1, 10)  # k == size is fine
    with pytest.raises(SearchError, match="unknown index backend"):
        HammingIndex(32, "lsh")
    with pytest.raises(SearchError, match="multiple of 8"):
        HammingIndex(12)


def test_payload_store_keeps_rows_encoded() -> None:
    store = PayloadStore.from_dicts([{"a": 1}, None, {"caption": "é 🚀"}])
    store.extend([{"b": [1, 2]}])
    assert [store[i] for i in range(4)] == [{"a": 1}, {}, {"caption": "é 🚀"}, {"b": [1, 2]}]
    taken = store.take(np.array([3, 0]))
    assert [taken[0], taken[1]] == [{"b": [1, 2]}, {"a": 1}]
    with pytest.raises(IndexFileError):
        PayloadStore(np.zeros(3, np.uint8), np.array([0, 5], np.int64))


class PlantedEncoder:
    """A stub model: a caption naming class c gets class c's centre code."""

    def __init__(self, centres: np.ndarray, names: list[str], model_id: str = "model-a") -> None:
        self.centres, self.names = centres, names
        self.metadata = {"bits": centres.shape[1], "model_id": model_id}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.centres[next(i for i, n in enumerate(self.names) if n in t)] for t in texts])

    def encode_images(self, images: list) -> np.ndarray:
        return self.encode_texts([str(x) for x in images])


def test_searcher_by_text_image_code_and_item() -> None:
    rng = np.random.default_rng(13)
    names = ["forest", "harbor", "runway"]
    centres = pm1(rng, 3, 32)
    archive = ArchiveIndex.create(32, MODEL)
    labels = np.repeat(np.arange(3), 20)
    noisy = np.where(rng.random((60, 32)) < 0.05, -centres[labels], centres[labels])
    archive.add("image", noisy, [{"class": names[c]} for c in labels])
    archive.add("text", centres[labels], [{"caption": f"a {names[c]}", "class": names[c]} for c in labels])
    searcher = Searcher(archive, PlantedEncoder(centres, names))
    hits = searcher.by_text(["boats in a harbor"], 10)[0]
    assert [h.payload["class"] for h in hits] == ["harbor"] * 10
    assert [h.rank for h in hits] == list(range(1, 11))
    assert all(a.distance <= b.distance for a, b in zip(hits, hits[1:], strict=False))
    assert {h.payload["class"] for h in searcher.by_image(["/x/runway_1.tif"], 5, "text")[0]} == {"runway"}
    assert searcher.by_item("image", int(hits[0].id), 3, "text")[0].payload["class"] == "harbor"
    assert searcher.by_code(centres[:1], 1)[0][0].payload["class"] == "forest"
    with pytest.raises(SearchError, match="empty"):
        searcher.by_text(["   "], 5)
    with pytest.raises(SearchError, match="needs the model"):
        Searcher(archive).by_text(["forest"], 5)
    with pytest.raises(IncompatibleIndexError):
        Searcher(archive, PlantedEncoder(centres, names, model_id="other"))
