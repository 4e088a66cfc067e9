"""A shard set: one logical index split over N ordinary index files, searched in parallel and merged exactly.

Why: one ``.tfidx`` file is one process's memory map and one scan; an archive of 10^8–10^9 items is
built faster by N processes and searched faster by N threads (faiss releases the GIL), and each shard
can live on its own disk or box. The set is described by a small JSON manifest written *instead of*
the single index file (``archive.tfidx``), so ``tfduch search --index archive.tfidx`` opens either kind
through :func:`open_index`. The manifest lists the shard files (``archive-00000-of-00004.tfidx`` …,
beside it), each shard's checksum (its metadata checksum over all sections), item counts and global id
ranges, plus the code length, model id and model metadata shared by all shards.

Ids are global: shard i holds the contiguous id range ``[start_i, end_i)`` of each collection, the ids a
single index over the same items in the same order would assign. Each shard answers the exact top-k by
(distance, id); the global top-k is contained in the union of the per-shard top-k, so sorting that union
by (distance, id) and keeping k gives exactly the single index's answer, ties included.

Atomicity: the shards are written first (each atomically), the manifest last (atomically). Loading
checks every shard against the manifest (checksum, code length, model id, id range), so a shard that
was replaced, damaged or lost is a clear :class:`IndexFileError` naming its file, never a mixed answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.index.backends import FAR, load_faiss, sort_candidates
from tfduch.index.core import HammingIndex, Hit, as_packed, check_k, hits_from
from tfduch.index.errors import IndexFileError, SearchError
from tfduch.index.store import MAGIC, ArchiveIndex, load_index
from tfduch.io import atomic_write_text

__all__ = ["SHARDS_FORMAT", "ShardedCollection", "ShardedIndex", "is_shard_set", "open_index", "shard_file_name",
           "shard_set_files", "write_shard_set"]

SHARDS_FORMAT = "tfduch-index-shards"
SHARDS_VERSION = 1
_MAX_MANIFEST = 64 << 20  # a manifest lists files, not items: anything bigger is not one


def shard_file_name(out: Path, shard: int, num_shards: int) -> Path:
    """``archive-00002-of-00004.tfidx`` beside ``archive.tfidx``."""
    return out.with_name(f"{out.stem}-{shard:05d}-of-{num_shards:05d}{out.suffix or '.tfidx'}")


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def write_shard_set(out: Path, metadata: dict[str, Any], shards: Sequence[dict[str, Any]]) -> Path:
    """Write the manifest of saved shard files atomically (after the shards themselves).

    ``shards``: per shard ``file`` (name beside ``out``), ``checksum``, ``bytes``, ``count`` and ``ids``
    (``{collection: [start, end)}``).
    """
    body = {"format": SHARDS_FORMAT, "format_version": SHARDS_VERSION, "metadata": dict(metadata),
            "shards": [dict(s) for s in shards]}
    body["metadata"]["count"] = {name: sum(int(s["count"].get(name, 0)) for s in shards)
                                 for name in (shards[0]["count"] if shards else {})}
    text = json.dumps({**body, "sha256": _digest(body)}, indent=1, ensure_ascii=False, default=str) + "\n"
    return atomic_write_text(Path(out), text)


def shard_set_files(path: str | os.PathLike[str]) -> list[Path]:
    """The shard files a shard-set manifest at ``path`` lists ([] when ``path`` is not one), e.g. to clean up."""
    path = Path(path)
    if not is_shard_set(path):
        return []
    try:
        return [path.parent / e["file"] for e in _read_manifest(path)["shards"]]
    except IndexFileError:
        return []


def is_shard_set(path: str | os.PathLike[str]) -> bool:
    """True for a shard-set manifest, False for anything else (a single index, a foreign file)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > _MAX_MANIFEST:
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return not head.startswith(MAGIC) and SHARDS_FORMAT.encode() in head


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
        recorded = parsed.pop("sha256")
        if parsed.get("format") != SHARDS_FORMAT:
            raise ValueError(f"format {parsed.get('format')!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as exc:
        raise IndexFileError(f"{path} is corrupt: unreadable shard-set manifest ({exc})") from None
    if _digest(parsed) != recorded:
        raise IndexFileError(f"{path} is corrupt: the shard-set manifest checksum does not match")
    if parsed.get("format_version") != SHARDS_VERSION:
        raise IndexFileError(f"{path} uses shard-set format {parsed.get('format_version')}; "
                             f"this tfduch reads format {SHARDS_VERSION}")
    return parsed


@contextlib.contextmanager
def _one_omp_thread() -> Iterator[None]:
    """faiss single-threaded in this thread while the shard threads run: the parallelism is across shards,
    and OpenMP teams spinning beside the pool threads on the same cores cost ~50x (measured, 2 cores)."""
    faiss = load_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class ShardedCollection:
    """One collection over all shards: the search API of :class:`HammingIndex`, merged exactly."""

    def __init__(self, name: str, parts: Sequence[HammingIndex], starts: Sequence[int],
                 pool: ThreadPoolExecutor | None) -> None:
        self.name = name
        self.parts = list(parts)
        self.starts = np.asarray(starts, np.int64)  # first global id of each shard (ranges are contiguous)
        self.bits = self.parts[0].bits
        self.backend = self.parts[0].backend
        self._pool = pool
        self._threads = pool._max_workers + 1 if pool is not None else 1  # the pool's threads + the caller's

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def check_k(self, k: int) -> int:
        """The checks (and messages) of :meth:`HammingIndex.check_k`, against the whole set's size."""
        return check_k(k, len(self))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [Q, k], distances [Q, k])`` — exactly one index's answer over the same items (exact backends)."""
        k = self.check_k(k)
        q = as_packed(queries, self.bits, "query codes")
        live = [p for p in self.parts if len(p)]

        def some(parts: Sequence[HammingIndex]) -> list[tuple[np.ndarray, np.ndarray]]:
            return [part.search(q, min(k, len(part))) for part in parts]

        # One group of shards per pool thread, the first searched by the calling thread: a query pays
        # (threads - 1) hand-offs, not one per shard.
        groups = [live[i :: self._threads] for i in range(min(self._threads, len(live)))]
        if len(groups) == 1:
            found = some(groups[0])
        else:
            futures = [self._pool.submit(some, g) for g in groups[1:]]  # type: ignore[union-attr]
            with _one_omp_thread():
                found = some(groups[0]) + [r for f in futures for r in f.result()]
        ids, dist = (np.concatenate(a, axis=1) for a in zip(*found, strict=True))
        dist = np.where(ids < 0, FAR, dist)  # an approximate shard's empty slots sort last
        dist, ids = sort_candidates(dist, ids, k)
        return ids, dist

    def search_hits(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        ids, dist = self.search(queries, k)
        return hits_from(ids, dist, self.payloads_of)

    def _part(self, item_id: int) -> HammingIndex:
        return self.parts[max(int(np.searchsorted(self.starts, item_id, side="right")) - 1, 0)]

    def payloads_of(self, ids: np.ndarray) -> list[dict[str, Any]]:
        return [self._part(int(i)).payloads_of(np.array([i]))[0] for i in ids]

    def payload(self, item_id: int) -> dict[str, Any]:
        return self._part(item_id).payload(item_id)

    def code(self, item_id: int) -> np.ndarray:
        return self._part(item_id).code(item_id)

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "backend": self.backend.get_config(), "count": len(self),
                "removed": sum(p.num_removed for p in self.parts), "next_id": max(p.next_id for p in self.parts),
                "shards": [len(p) for p in self.parts]}


class ShardedIndex(ArchiveIndex):
    """A shard set opened for search: the query API of :class:`ArchiveIndex` (``search``, ``collection``,
    ``check_compatible``, ``info``) over N shard files; read-only (rebuild the set to change it)."""

    def __init__(self, metadata: dict[str, Any], shards: Sequence[ArchiveIndex], path: Path,
                 threads: int | None = None) -> None:
        threads = min(len(shards), os.cpu_count() or 1) if threads is None else threads
        self.shards = list(shards)
        # threads - 1 pool threads: the calling thread searches one group of shards itself
        self._pool = None if threads <= 1 else ThreadPoolExecutor(
            threads - 1, thread_name_prefix="tfduch-shard", initializer=lambda: load_faiss().omp_set_num_threads(1))
        entries = metadata["shards"]
        collections = {
            name: ShardedCollection(name, [s.collections[name] for s in self.shards],
                                    [int(e["ids"][name][0]) for e in entries], self._pool)
            for name in self.shards[0].collections}
        super().__init__(metadata, collections, path)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: dict[str, Any] | None = None, mmap: bool = True,
             verify: bool = True, threads: int | None = None) -> ShardedIndex:
        """Open a shard set, checking every shard file against the manifest (in parallel)."""
        path = Path(path)
        manifest = _read_manifest(path)
        meta, entries = dict(manifest["metadata"]), manifest["shards"]
        if not entries:
            raise IndexFileError(f"{path} is corrupt: the shard set lists no shards")
        meta["shards"] = entries

        def open_one(entry: dict[str, Any]) -> ArchiveIndex:
            file = path.parent / entry["file"]
            try:
                shard = load_index(file, mmap=mmap, verify=verify)
            except IndexFileError as exc:
                raise IndexFileError(f"shard set {path}: shard {entry['file']}: {exc}") from None
            _check_shard(path, file, shard, meta, entry)
            return shard

        with ThreadPoolExecutor(min(len(entries), os.cpu_count() or 1)) as pool:
            shards = list(pool.map(open_one, entries))
        index = cls(meta, shards, path, threads)
        if model is not None:
            index.check_compatible(model)
        return index

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(c)}" for n, c in self.collections.items())
        return f"ShardedIndex({self.path}, {len(self.shards)} shards, {self.bits} bits, model {self.model_id}, {sizes})"

    def _where(self) -> str:
        return f"shard set {self.path}"

    def add(self, collection: str, codes: np.ndarray, payloads: list[dict[str, Any]] | None = None) -> np.ndarray:
        raise SearchError(f"{self._where()} is read-only: rebuild it (tfduch index build --from-shards) to add items")

    def remove(self, collection: str, ids: list[int]) -> int:
        raise SearchError(f"{self._where()} is read-only: rebuild it (tfduch index build --from-shards) to remove "
                          "items")

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        raise IndexFileError(f"{self._where()} is written by tfduch index build --from-shards, not saved whole")

    def info(self) -> dict[str, Any]:
        """Set-wide metadata and counts plus one row per shard (file, bytes, counts, id ranges)."""
        out = {k: v for k, v in self.metadata.items() if k != "shards"}
        out["collections"] = {n: c.get_config() for n, c in self.collections.items()}
        out["count"] = sum(len(c) for c in self.collections.values())
        rows = []
        for entry, shard in zip(self.metadata["shards"], self.shards, strict=True):
            rows.append({**entry, "bytes": shard.path.stat().st_size if shard.path else None})
        total = sum(r["bytes"] or 0 for r in rows)
        out["file"] = {"path": str(self.path), "bytes": total, "bytes_per_item": round(total / max(out["count"], 1), 1)}
        out["shard_set"] = {"num_shards": len(rows), "shards": rows}
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _check_shard(path: Path, file: Path, shard: ArchiveIndex, meta: dict[str, Any], entry: dict[str, Any]) -> None:
    """A shard must be the one the manifest recorded: same checksum, code length, model and id ranges."""
    problems = []
    if shard.metadata.get("checksum") != entry.get("checksum"):
        problems.append("its checksum differs from the one the manifest recorded (replaced or rebuilt separately)")
    if shard.bits != int(meta["bits"]):
        problems.append(f"it holds {shard.bits}-bit codes, the set {meta['bits']}-bit")
    if shard.model_id != meta.get("model_id"):
        problems.append(f"it was built with model {shard.model_id}, the set with {meta.get('model_id')}")
    for name, (start, end) in entry.get("ids", {}).items():
        coll = shard.collections.get(name)
        ids = coll.ids if coll is not None else np.zeros(0, np.int64)
        if coll is None or len(ids) != end - start or (len(ids) and (ids[0] != start or ids[-1] != end - 1)):
            problems.append(f"its {name} ids are not the recorded range [{start}, {end})")
    if problems:
        raise IndexFileError(f"shard set {path}: shard {file} does not belong to this set: {'; '.join(problems)}; "
                             "rebuild the set with tfduch index build --from-shards")


def open_index(path: str | os.PathLike[str], *, model: dict[str, Any] | None = None, mmap: bool = True,
               verify: bool = True) -> ArchiveIndex:
    """A single index file, a shard set or an archive in Milvus (``milvus://HOST:PORT/ARCHIVE``, connection
    options from ``$TFDUCH_MILVUS_URI`` / ``$TFDUCH_MILVUS_TOKEN``), whichever ``path`` is (one search API)."""
    from tfduch.index.milvus import is_milvus_location

    if is_milvus_location(path):
        from tfduch.index.milvus import open_milvus

        return open_milvus(path, model=model)
    if is_shard_set(path):
        return ShardedIndex.load(path, model=model, mmap=mmap, verify=verify)
    return load_index(path, model=model, mmap=mmap, verify=verify)
