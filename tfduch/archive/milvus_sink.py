"""A Beam sink into Milvus: ``encode-archive`` writes each finished code shard straight into an archive's
``image`` collection (:mod:`tfduch.index.milvus`), so encoding and indexing both run on existing engines.

Records are ``(id, packed code bytes, payload)``; ids are the items' positions in the sorted input list
(the ``id`` every shard payload records), so they are stable across re-runs. Batches of ``batch_size``
records are upserted by primary key with the client's retries (connection failures are retried, then the
bundle fails and Beam retries it): a job killed half-way and run again re-sends every shard — those it
encodes now and those already on disk — and upserts overwrite, so the collection ends with each item
exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from tfduch.index import code_shards as fmt
from tfduch.index.milvus import MilvusIndex, MilvusTarget, open_milvus

__all__ = ["WriteToMilvus", "finish_archive", "prepare_archive", "shard_records"]

_GEO_FIELDS = ("scene_id", "minlon", "minlat", "maxlon", "maxlat")


def prepare_archive(target: MilvusTarget, model: dict[str, Any], overwrite: bool = False) -> MilvusTarget:
    """Create the archive (or reopen one of the same model and code length: a resumed job); returns the
    target with the server's URI resolved, for the workers."""
    from dataclasses import replace

    index = MilvusIndex.create(target, int(model["bits"]), model, overwrite=overwrite, resume=not overwrite)
    return replace(index.target, uri=index.client.uri)


def shard_records(folder: str, num_shards: int, shard: int) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The records of one written code shard: (input position, packed code, index payload)."""
    packed, paths, payloads = fmt.read_shard(fmt.join(folder, fmt.shard_name(shard, num_shards)))
    for row, path, p in zip(packed, paths, payloads, strict=True):
        payload: dict[str, Any] = {"path": p.get("path") or path, "class": p.get("class")}
        if p.get("captions"):
            payload["caption"] = p["captions"][0]
        payload.update({k: p[k] for k in _GEO_FIELDS if p.get(k) is not None})
        yield int(p["id"]), row.tobytes(), payload


class _Upsert(beam.DoFn):
    def __init__(self, target: MilvusTarget, collection: str) -> None:
        self.target, self.collection = target, collection
        self.rows = beam.metrics.Metrics.counter("tfduch_archive", "milvus_rows_written")

    def setup(self) -> None:
        self.index = open_milvus(self.target)

    def process(self, batch: list[tuple[int, bytes, dict[str, Any]]]) -> Iterator[int]:
        ids = np.array([r[0] for r in batch], np.int64)
        codes = np.stack([np.frombuffer(r[1], np.uint8) for r in batch])
        self.index.collection(self.collection).add(codes, [r[2] for r in batch], ids)
        self.rows.inc(len(batch))
        yield len(batch)


class WriteToMilvus(beam.PTransform):
    """``(id, packed, payload)`` records → batched upserts into one collection of a Milvus archive."""

    def __init__(self, target: MilvusTarget, collection: str = "image", batch_size: int = 1000) -> None:
        super().__init__()
        self.target, self.collection, self.batch_size = target, collection, int(batch_size)

    def expand(self, records: Any) -> Any:
        return (records
                | "BatchForMilvus" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
                | "UpsertIntoMilvus" >> beam.ParDo(_Upsert(self.target, self.collection)))


def finish_archive(target: MilvusTarget, num_files: int) -> MilvusIndex:
    """After the job: record the next id (ids are input positions) and build the code index."""
    index = open_milvus(target)
    coll = index.collection("image")
    coll.next_id = max(coll.next_id, num_files)  # type: ignore[attr-defined]
    index.save()
    index.flush()
    return index
