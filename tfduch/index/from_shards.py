"""Index an ``encode-archive`` output folder directly: one index file, or N index shards built in parallel.

The codes are already computed (``packed`` in each ``codes-*.npz``), so images need no model; captions
in the payloads do (they are text, not codes): with a model (``run`` / ``export``, which must be the
archive's model) they are encoded into the ``text`` collection, without one only images are indexed.

Ids are the items' positions in archive order (shard 0's rows, then shard 1's, …) and, for captions,
their positions in the same order, so one index and N index shards over the same folder hold the same
ids and rank ties identically. The N index shards split the items into N contiguous, near-equal ranges
(independent of the archive's own sharding); each worker process reads only the archive files that
overlap its range and writes one ordinary index file; the shard-set manifest
(:mod:`tfduch.index.sharded`) is written last.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.index.build import SourceItem, add_encoded, encode_captions
from tfduch.index.encoders import QueryEncoder, open_encoder
from tfduch.index.errors import IncompatibleIndexError
from tfduch.index.sharded import shard_file_name, shard_set_files, write_shard_set
from tfduch.index.store import COLLECTIONS, ArchiveIndex, now_iso

__all__ = ["BuildResult", "archive_model", "build_from_shards"]


@dataclass
class BuildResult:
    """What a build wrote: the path (index file or shard-set manifest), per-collection counts, and notes."""

    path: Path
    num_shards: int
    count: dict[str, int]
    model_id: str | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    """One index shard to build: global item range [lo, hi) and the archive files that overlap it."""

    shard: int
    num_shards: int
    out: str
    lo: int
    hi: int
    files: tuple[tuple[str, int], ...]  # (archive shard file, global id of its first row)
    caption_base: int  # global caption id of the first caption of files[0]
    model: dict[str, Any]
    backend: str
    params: dict[str, Any]
    encoder_spec: dict[str, str] | None
    batch_size: int
    milvus: Any = None  # a MilvusTarget: write into that archive in Milvus instead of an index file


def archive_model(manifest: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The index's model metadata from an archive manifest: its ``model``, with ``bits`` and ``model_id``."""
    try:
        bits = int(manifest["bits"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{folder}: the archive manifest records no code length (bits)") from None
    model = dict(manifest.get("model") or {})
    model.update(bits=bits, model_id=manifest.get("model_id", model.get("model_id")))
    model.setdefault("archive", str(folder))
    return model


def _items(path: str) -> int:
    from tfduch.index.code_shards import read_shard_meta

    return int(read_shard_meta(path)["items"])


def _items_and_captions(path: str) -> tuple[int, int]:
    """Items and captions of one archive file, in one read (the payloads are parsed only when captions count)."""
    from tfduch.index.code_shards import read_shard

    codes, _, payloads = read_shard(path)
    return len(codes), sum(len(p.get("captions") or ()) for p in payloads)


def _check_encoder(encoder: QueryEncoder, model: dict[str, Any], folder: str) -> None:
    probe = ArchiveIndex({"bits": model["bits"], "model_id": model["model_id"], "model": model}, {})
    try:
        probe.check_compatible(encoder.metadata)
    except IncompatibleIndexError as exc:
        raise IncompatibleIndexError(f"archive {folder}: {exc}") from None


_OWN_FIELDS = ("path", "id", "class", "captions")  # the archive's own fields; others (geo tiles) are kept


def _build_shard(job: _Job, encoder: QueryEncoder | None = None) -> dict[str, Any]:
    """Read the overlapping archive files, add images (and encoded captions), save one index file."""
    from tfduch.index.code_shards import read_shard

    if encoder is None and job.encoder_spec is not None:
        encoder = open_encoder(**job.encoder_spec)
    if encoder is not None:
        _check_encoder(encoder, job.model, job.model.get("archive", "?"))
    items: list[SourceItem] = []
    packed: list[np.ndarray] = []
    caption_start = job.caption_base
    for n, (file, first) in enumerate(job.files):
        codes, paths, payloads = read_shard(file)
        if codes.shape[1] * 8 != job.model["bits"]:
            raise DataError(f"archive shard {file} holds {codes.shape[1] * 8}-bit codes, the manifest says "
                            f"{job.model['bits']}")
        a, b = max(job.lo - first, 0), min(job.hi - first, len(codes))
        if n == 0:
            caption_start += sum(len(p.get("captions") or ()) for p in payloads[:a])
        packed.append(codes[a:b])
        items += [SourceItem(p.get("path") or path, p.get("class"), tuple(p.get("captions") or ()) if encoder else (),
                             {k: v for k, v in p.items() if k not in _OWN_FIELDS} or None)
                  for path, p in zip(paths[a:b], payloads[a:b], strict=True)]
    if job.milvus is not None:
        from tfduch.index.milvus import open_milvus

        index = open_milvus(job.milvus)
    else:
        index = ArchiveIndex.create(job.model["bits"], job.model, job.backend, **job.params)
    index.collection("image").next_id = job.lo  # empty collections: the first add takes the global ids
    index.collection("text").next_id = caption_start
    caption_codes = encode_captions(encoder, items, job.batch_size, False) if encoder is not None else None
    ids = add_encoded(index, items, np.concatenate(packed), caption_codes)
    if job.milvus is not None:  # rows are upserted with their global ids: nothing to save, nothing to merge
        return {"count": {name: len(ids.get(name, ())) for name in COLLECTIONS}}
    if job.num_shards > 1:
        index.metadata["shard"] = {"index": job.shard, "count": job.num_shards}
    path = index.save(job.out)
    starts = {"image": job.lo, "text": caption_start}
    return {"file": path.name, "checksum": index.metadata["checksum"], "bytes": path.stat().st_size,
            "count": {name: len(index.collection(name)) for name in COLLECTIONS},
            "ids": {name: [starts[name], starts[name] + len(ids.get(name, ()))] for name in COLLECTIONS}}


def _pool_map(fn: Any, jobs: Sequence[Any], workers: int) -> list[Any]:
    """``map`` over a spawn process pool (never fork a process that may hold TensorFlow or faiss threads)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def build_from_shards(folder: str | Path, out: str | Path, *, index_shards: int = 1, workers: int | None = None,
                      encoder: QueryEncoder | None = None, encoder_spec: dict[str, str] | None = None,
                      backend: str = "flat", backend_params: dict[str, Any] | None = None,
                      batch_size: int = 256, milvus: dict[str, Any] | None = None) -> BuildResult:
    """Index the archive folder ``folder`` into ``out`` (one file, or a shard set with ``index_shards > 1``).

    ``encoder`` (an object, used in this process only) or ``encoder_spec`` (``{"run": path}`` or
    ``{"export": path}``, opened by each worker) encodes the captions; with neither, images only.
    ``workers`` processes build the shards (default: one per shard, at most the CPU count).
    ``out`` may be a Milvus location (``milvus://HOST:PORT/ARCHIVE``, :mod:`tfduch.index.milvus`; ``milvus``:
    connection options, ``overwrite`` / ``resume``): the N jobs then upsert their id ranges into the
    archive's collections in parallel, and a re-run with ``resume`` finishes an interrupted load without
    duplicates (same ids, upserts).
    """
    from tfduch.index.code_shards import iter_shards, join, read_manifest, shard_name
    from tfduch.index.milvus import is_milvus_location

    mtarget = None
    if is_milvus_location(out):
        from tfduch.index.milvus import MilvusTarget

        options = dict(milvus or {})
        create = {k: options.pop(k) for k in ("overwrite", "resume") if k in options}
        mtarget = MilvusTarget.parse(out, **options)
    folder, out = str(folder), Path(out)
    manifest = read_manifest(folder)
    if manifest.get("status", "complete") != "complete":
        raise DataError(f"archive {folder} is not finished (manifest status {manifest['status']!r}): re-run the "
                        "same tfduch encode-archive command to complete it, then index it")
    model = archive_model(manifest, folder)
    num = int(manifest["num_shards"])
    files = [join(folder, shard_name(i, num)) for i in range(num)]
    next(iter_shards(folder), None)  # the completeness check (names the first missing shard) before any work
    workers = min(index_shards, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    notes = []
    if encoder is not None and workers > 1:
        raise ValueError("an encoder object is used in this process only: pass encoder_spec, or workers=1")
    with_text = encoder is not None or encoder_spec is not None
    if encoder is not None:
        _check_encoder(encoder, model, folder)
    if not with_text:
        notes.append(f"captions are not indexed (images only): pass --run or --export with the archive's model "
                     f"{model.get('model_id')} to index the captions in the payloads too")
    if (encoder is not None or encoder_spec is not None) and not model.get("source"):
        model["source"] = dict(encoder.metadata.get("source") or {}) if encoder is not None else \
            {"kind": next(iter(encoder_spec)), "path": str(Path(next(iter(encoder_spec.values()))).resolve())}
    if with_text:
        pairs = _pool_map(_items_and_captions, files, workers)
        counts, captions = [n for n, _ in pairs], [c for _, c in pairs]
    else:
        counts, captions = _pool_map(_items, files, workers), [0] * num
    total = sum(counts)
    if total == 0:
        raise DataError(f"archive {folder} holds no items (all inputs went to the dead letters?)")
    if not 1 <= index_shards <= total:
        raise DataError(f"cannot split {total} items into {index_shards} index shards: ask for 1..{total}")
    first = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    first_caption = np.concatenate([[0], np.cumsum(captions)]).astype(int)
    bounds = [total * j // index_shards for j in range(index_shards + 1)]
    jobs = []
    for j in range(index_shards):
        lo, hi = bounds[j], bounds[j + 1]
        overlap = [i for i in range(num) if first[i] < hi and first[i + 1] > lo]
        target = out if index_shards == 1 else shard_file_name(out, j, index_shards)
        jobs.append(_Job(j, index_shards, str(target), lo, hi, tuple((files[i], int(first[i])) for i in overlap),
                         int(first_caption[overlap[0]]), model, backend, dict(backend_params or {}), encoder_spec,
                         batch_size))
    if mtarget is not None:
        from dataclasses import replace

        from tfduch.index.milvus import MilvusIndex

        index = MilvusIndex.create(mtarget, int(model["bits"]), model, **create, **dict(backend_params or {}))
        mtarget = replace(index.target, uri=index.client.uri)  # workers connect to the server this process found
        jobs = [replace(job, milvus=mtarget) for job in jobs]
        if encoder is not None:
            written = [_build_shard(job, encoder) for job in jobs]
        else:
            written = _pool_map(_build_shard, jobs, workers)
        index = MilvusIndex.create(mtarget, int(model["bits"]), model, resume=True)  # reopen: record the next ids
        for name in index.collections:
            index.collection(name).next_id = sum(w["count"][name] for w in written)
        index.save()
        index.flush()
        count = {name: sum(w["count"][name] for w in written) for name in COLLECTIONS}
        return BuildResult(Path(mtarget.location()), index_shards, count, model["model_id"], notes)
    stale = set(shard_set_files(out))  # an earlier set at ``out``: its files go once the new one is written
    if encoder is not None:
        written = [_build_shard(job, encoder) for job in jobs]
    else:
        written = _pool_map(_build_shard, jobs, workers)
    count = {name: sum(w["count"][name] for w in written) for name in COLLECTIONS}
    if index_shards > 1:
        meta = {"bits": model["bits"], "model_id": model["model_id"], "model": model, "created_at": now_iso(),
                "updated_at": None, "backend": {"name": backend, **dict(backend_params or {})},
                "source": {"archive": folder}}
        write_shard_set(out, meta, written)
    for path in stale - {out.parent / w["file"] for w in written}:
        path.unlink(missing_ok=True)
    return BuildResult(out, index_shards, count, model["model_id"], notes)
