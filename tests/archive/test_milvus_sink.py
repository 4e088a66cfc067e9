"""``encode-archive --milvus``: the Beam sink writes every encoded item into Milvus once, also across a
re-run after a failed load, and the Milvus archive answers exactly like the file index built from the shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import PixelEncoder, fail_on_call

pytest.importorskip("apache_beam")

from tfduch.archive.beam import EncoderSpec, encode_archive, pipeline_options  # noqa: E402
from tfduch.index import code_shards as fmt  # noqa: E402
from tfduch.index.from_shards import build_from_shards  # noqa: E402
from tfduch.index.store import load_index  # noqa: E402


def pixel_encoder() -> PixelEncoder:
    return PixelEncoder("pixels-sink")


def test_beam_sink_writes_each_item_once_and_resumes(milvus_server, tmp_path: Path, monkeypatch) -> None:
    from tfduch.data.synthetic import make_synthetic_dataset
    from tfduch.index import milvus as mv

    root = make_synthetic_dataset(tmp_path / "data", n_classes=3, per_class=6, image_size=48, image_format="png")
    (root / "images" / "broken.png").write_bytes(b"not an image")  # a dead letter leaves a gap in the ids
    target = mv.MilvusTarget.parse("milvus://local/sink", uri=milvus_server.uri)
    out = tmp_path / "codes"

    def run(**kwargs):
        return encode_archive([str(root / "images" / "*.png")], str(out), EncoderSpec(factory=pixel_encoder),
                              captions=str(root / "captions.json"), options=pipeline_options(direct_mode="in_memory"),
                              progress_interval=60, log=lambda _: None, shard_size=5, batch_size=3, milvus=target,
                              milvus_batch=4, **kwargs)

    # the first run's Milvus load fails part-way (after the first batch): the shards are on disk, not all rows
    lost = mv.MilvusUnavailableError("injected: connection lost")
    real = fail_on_call(monkeypatch, mv.MilvusCollection, "add", 2, lost)
    with pytest.raises(Exception, match="injected"):
        run(milvus_overwrite=True)
    monkeypatch.setattr(mv.MilvusCollection, "add", real)
    result = run()  # every shard already encoded is re-sent; upserts by id leave no duplicates
    assert result.items == 18 and result.dead == 1
    index = mv.open_milvus(target)
    image = index.collection("image")
    assert len(image) == 18 and image.next_id == 19
    assert result.manifest["milvus"]["items"] == 18

    # ids are input positions (the broken file's position is missing); payloads and codes match the shards
    shards = list(fmt.iter_shards(out))
    ids = [int(p["id"]) for s in shards for p in s.payloads]
    packed = np.concatenate([s.packed for s in shards])
    assert sorted(image.ids_where("id >= 0")) == sorted(ids) and len(set(ids)) == 18
    np.testing.assert_array_equal(image.code(ids[4]), packed[4])
    assert image.payload(ids[4])["path"] == shards[0].payloads[4]["path"] if len(shards[0].payloads) > 4 else True

    # the same codes in a file index (ids = row positions there): the same distances, the same items
    build_from_shards(out, tmp_path / "file.tfidx")
    ref = load_index(tmp_path / "file.tfidx")
    q = packed[[0, 7, 11]]
    got, want = image.search(q, 10), ref.collection("image").search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    assert [[ids[int(j)] for j in row] for row in want[0]] == got[0].tolist()
