"""The index past one process: ingest encode-archive shards; N index shards searched as exactly one index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_index import pm1, single_thread_faiss  # noqa: F401  (the autouse fixture: one faiss thread)

from tfduch.archive.shards import write_manifest, write_shard
from tfduch.cli import main
from tfduch.eval.ranking import hamming_distances, hamming_rank, pack_codes
from tfduch.index import ArchiveIndex, IncompatibleIndexError, IndexFileError, SearchError
from tfduch.index.from_shards import build_from_shards
from tfduch.index.searcher import Searcher
from tfduch.index.sharded import ShardedIndex, open_index

BITS = 32
MODEL = {"bits": BITS, "model_id": "m-archive", "method": "duch", "source": {"kind": "export", "path": "/gone"}}
CLASSES = ["forest", "harbor", "runway"]


def tied(rng: np.random.Generator, n: int, bits: int = BITS) -> np.ndarray:
    """Heavily tied codes: 4 distinct codes, each repeated ~n/4 times, shuffled."""
    return pm1(rng, 4, bits)[rng.integers(0, 4, n)]


def write_archive(folder: Path, codes: np.ndarray, sizes: list[int], captions: bool = False,
                  model: dict | None = None) -> Path:
    """An encode-archive output folder with archive shards of the given sizes (0 allowed)."""
    model = MODEL if model is None else model
    assert sum(sizes) == len(codes)
    start = 0
    for i, n in enumerate(sizes):
        rows = range(start, start + n)
        payloads = [{"path": f"/archive/{CLASSES[r % 3]}/{r}.tif", "id": f"{r}", "class": CLASSES[r % 3],
                     "captions": [f"caption {j} of {CLASSES[r % 3]} {r}" for j in range(r % 3)] if captions else []}
                    for r in rows]
        write_shard(folder, i, len(sizes), pack_codes(codes[start : start + n]) if n else
                    np.zeros((0, codes.shape[1] // 8), np.uint8), [p["path"] for p in payloads], payloads)
        start += n
    write_manifest(folder, {"bits": codes.shape[1], "model_id": model["model_id"], "model": model,
                            "num_shards": len(sizes)})
    return folder


class CaptionEncoder:
    """A stub model: a caption's code is the code of the image its last word names (the item number)."""

    def __init__(self, codes: np.ndarray, model_id: str = "m-archive") -> None:
        self.codes = codes
        self.metadata = {"bits": codes.shape[1], "model_id": model_id}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.codes[int(t.split()[-1])] for t in texts])

    def encode_images(self, images: list) -> np.ndarray:
        raise AssertionError("archive images are already encoded")


def one_index(codes: np.ndarray) -> ArchiveIndex:
    """The reference: one index over the same codes, filled in order (ids 0..N-1)."""
    index = ArchiveIndex.create(codes.shape[1], MODEL)
    index.add("image", codes)
    return index


# ------------------------------------------------------------------------------- exact equal results
@pytest.mark.parametrize("kind", ["random", "tied"])
def test_shard_set_search_equals_one_index(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0 if kind == "random" else 1)
    codes = pm1(rng, 1001, BITS) if kind == "random" else tied(rng, 1001)
    folder = write_archive(tmp_path / "codes", codes, [137, 0, 500, 364])  # index shards straddle these
    single = open_index(build_from_shards(folder, tmp_path / "one.tfidx", workers=1).path)
    sharded = open_index(build_from_shards(folder, tmp_path / "set.tfidx", index_shards=4, workers=1).path)
    assert isinstance(sharded, ShardedIndex) and not isinstance(single, ShardedIndex)
    assert [len(c) for c in sharded.collection("image").parts] == [250, 250, 250, 251]
    reference = one_index(codes)
    queries = np.concatenate([pm1(rng, 5, BITS), codes[:3]])
    for k in (1, 7, 64, 250, 251, 999, 1000, 1001):
        ids, dist = sharded.collection("image").search(queries, k)
        for other in (single, reference):
            ref_ids, ref_dist = other.collection("image").search(queries, k)
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(dist, ref_dist)
        ranked = hamming_rank(queries, codes, topk=k)  # tfduch.eval's (distance, index) order
        np.testing.assert_array_equal(ids, ranked)
        np.testing.assert_array_equal(dist, np.take_along_axis(hamming_distances(queries, codes), ranked, axis=1))
    hits = sharded.search(queries[:1], 5)[0]
    assert [h.to_dict() for h in hits] == [h.to_dict() for h in single.search(queries[:1], 5)[0]]
    assert hits[0].payload["path"] == f"/archive/{CLASSES[hits[0].id % 3]}/{hits[0].id}.tif"


def test_captions_are_encoded_with_the_model_and_get_global_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    codes = tied(rng, 120)
    folder = write_archive(tmp_path / "codes", codes, [50, 70], captions=True)
    enc = CaptionEncoder(codes)
    single = open_index(build_from_shards(folder, tmp_path / "one.tfidx", encoder=enc, workers=1).path)
    sharded = open_index(build_from_shards(folder, tmp_path / "set.tfidx", index_shards=3, encoder=enc,
                                           workers=1).path)
    n_captions = sum(r % 3 for r in range(120))
    assert len(sharded.collection("text")) == len(single.collection("text")) == n_captions
    for k in (1, 10, n_captions):
        a = sharded.search(codes[:4], k, "text")
        b = single.search(codes[:4], k, "text")
        assert [[h.to_dict() for h in row] for row in a] == [[h.to_dict() for h in row] for row in b]
    for hit in sharded.search(codes[:2], 20, "text")[0]:
        image = sharded.collection("image").payload(hit.payload["image_id"])
        assert hit.payload["caption"].endswith(f" {hit.payload['image_id']}") and image["path"] == hit.payload["path"]
    searcher = Searcher(sharded, enc)
    near = searcher.by_item("image", 77, 3, "text")  # captions of images with image 77's code, lowest ids first
    assert [h.distance for h in near] == [0, 0, 0] and all((codes[h.payload["image_id"]] == codes[77]).all()
                                                           for h in near)
    assert [h.to_dict() for h in near] == [h.to_dict() for h in Searcher(single, enc).by_item("image", 77, 3, "text")]
    assert searcher.by_text(["caption 1 of harbor 7"], 1)[0][0].distance == 0
    with pytest.raises(IncompatibleIndexError, match="archive .* m-archive .* m-other"):
        build_from_shards(folder, tmp_path / "x.tfidx", encoder=CaptionEncoder(codes, "m-other"), workers=1)


def test_process_pool_build_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    codes = tied(rng, 300)
    folder = write_archive(tmp_path / "codes", codes, [100, 100, 100], captions=True)
    out = tmp_path / "archive.tfidx"
    assert main(["index", "build", "--from-shards", str(folder), "--index-shards", "3", "--workers", "2",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "captions are not indexed" in captured.err and "--run or --export" in captured.err
    assert "300 image items" in captured.out and "3 index shards" in captured.out
    assert sorted(p.name for p in tmp_path.glob("archive*.tfidx")) == [
        "archive-00000-of-00003.tfidx", "archive-00001-of-00003.tfidx", "archive-00002-of-00003.tfidx",
        "archive.tfidx"]
    assert main(["index", "build", "--from-shards", str(folder), "--out", str(tmp_path / "one.tfidx")]) == 0
    capsys.readouterr()
    code = pack_codes(codes[5:6])[0].tobytes().hex()
    answers = []
    for path in (out, tmp_path / "one.tfidx"):
        assert main(["search", "--code", code, "--index", str(path), "-k", "120", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1]
    assert main(["index", "info", "--index", str(out)]) == 0
    info = capsys.readouterr().out
    assert "a set of 3 shards" in info and "model m-archive" in info and "image      300 items" in info
    assert "archive-00002-of-00003.tfidx" in info and "image ids 200..299 (100)" in info
    assert main(["index", "info", "--index", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shard_set"]["num_shards"] == 3
    for args, message in ((["-k", "301"], "k=301 is larger than the collection (300 items)"),
                          (["-k", "0"], "k must be >= 1")):
        assert main(["search", "--code", code, "--index", str(out), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["index", "remove", "--index", str(out), "--ids", "3"]) == 2
    assert "shard set" in capsys.readouterr().err
    # rebuilding with fewer shards replaces the set and removes the files it no longer lists
    assert main(["index", "build", "--from-shards", str(folder), "--index-shards", "2", "--workers", "1",
                 "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.glob("archive*.tfidx")) == [
        "archive-00000-of-00002.tfidx", "archive-00001-of-00002.tfidx", "archive.tfidx"]
    assert main(["index", "build", "--from-shards", str(folder), "--images", str(folder), "--out",
                 str(tmp_path / "y.tfidx")]) == 2
    assert "give one source" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ errors
def test_errors_hold_for_shard_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    codes = pm1(rng, 90, BITS)
    folder = write_archive(tmp_path / "codes", codes, [40, 50])
    out = build_from_shards(folder, tmp_path / "set.tfidx", index_shards=3, workers=1).path
    index = open_index(out)
    for k, message in ((91, r"k=91 is larger than the collection \(90 items\)"), (0, ">= 1"), (-1, ">= 1"),
                       (2.5, "integer")):
        with pytest.raises(SearchError, match=message):
            index.search(codes[:1], k)
    with pytest.raises(SearchError, match="64 columns .* 32-bit"):
        index.search(pm1(rng, 1, 64), 3)
    with pytest.raises(IncompatibleIndexError, match="built with model m-archive .* m-other"):
        open_index(out, model={"bits": BITS, "model_id": "m-other"})
    with pytest.raises(IncompatibleIndexError, match="holds 32-bit codes"):
        Searcher(index, CaptionEncoder(pm1(rng, 2, 64)))
    assert open_index(out, model=MODEL).model_id == "m-archive"
    with pytest.raises(SearchError, match="read-only"):
        index.add("image", codes[:1])

    shard = tmp_path / "set-00001-of-00003.tfidx"
    good = shard.read_bytes()
    data = bytearray(good)
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=r"set-00001-of-00003\.tfidx.*corrupt"):
        open_index(out)
    shard.unlink()
    with pytest.raises(IndexFileError, match=r"not found: .*set-00001-of-00003\.tfidx"):
        open_index(out)
    assert main(["search", "--code", "00000000", "--index", str(out)]) == 2
    assert "set-00001-of-00003.tfidx" in capsys.readouterr().err  # the CLI names the missing shard too
    other = build_from_shards(write_archive(tmp_path / "other", pm1(rng, 90, BITS), [90]), tmp_path / "o.tfidx",
                              index_shards=3, workers=1).path
    (tmp_path / "o-00001-of-00003.tfidx").rename(shard)  # a shard of another set under the right name
    with pytest.raises(IndexFileError, match=r"set-00001-of-00003\.tfidx does not belong to this set: its checksum"):
        open_index(out)
    shard.write_bytes(good)
    assert len(open_index(out).collection("image")) == 90 and other.exists()
    manifest = out.read_text()
    out.write_text(manifest.replace('"m-archive"', '"m-forged"', 1))
    with pytest.raises(IndexFileError, match="manifest checksum"):
        open_index(out)
    out.write_text(manifest)
    (folder / "codes-00001-of-00002.npz").unlink()
    with pytest.raises(Exception, match=r"codes-00001-of-00002\.npz"):
        build_from_shards(folder, tmp_path / "z.tfidx", workers=1)
    unfinished = write_archive(tmp_path / "unfinished", codes[:10], [10])
    write_manifest(unfinished, {"bits": BITS, "model_id": "m-archive", "num_shards": 1, "status": "running"})
    with pytest.raises(Exception, match="not finished .*running.* re-run"):
        build_from_shards(unfinished, tmp_path / "z.tfidx", workers=1)
    with pytest.raises(Exception, match="cannot split 40 items into 41"):
        build_from_shards(write_archive(tmp_path / "small", codes[:40], [40]), tmp_path / "z.tfidx",
                          index_shards=41, workers=1)
