"""Sharded code files: the hand-over format between archive encoding (``tfduch encode-archive``) and the index.

It lives in ``tfduch.index`` because it is what the index ingests; ``tfduch.archive`` (above the index) writes
it, and ``tfduch.archive.shards`` re-exports it under its historical name.

A shard folder holds::

    manifest.json                          bits, model_id + model metadata, input glob, shard count, totals
    codes-SSSSS-of-NNNNN.npz               one per shard (np.savez, no pickles):
        packed    uint8 [n, K/8]   tfduch.codes.pack_codes: the export's / the index's ``packed`` order
        paths     str   [n]        source file URIs, in the sorted input order
        payloads  str   [n]        one JSON object per item: {"path", "id", "class" (or null), "captions": [...]}
        meta      str   []         JSON: shard index / count, model_id, bits, sha256 of the shard's input list
    dead-letter-SSSSS-of-NNNNN.jsonl       one JSON line per bad input of the shard: {"path", "id", "reason"}

Each file is written to a temporary name in the same folder, synced and renamed (object stores:
created under a temporary name and renamed, which publishes it whole), the dead-letter file before
the codes file: a codes file that exists is a finished shard. Paths with a scheme (``gs://``,
``s3://``, ...) go through Beam's ``FileSystems``, imported only then, so reading local shards never
needs Beam.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError
from tfduch.io import atomic_write_bytes, json_default

__all__ = ["DEAD_LETTER_NAME", "MANIFEST_NAME", "SHARD_NAME", "Shard", "ShardError", "dead_letter_name", "file_exists",
           "inputs_digest", "is_remote", "iter_shards", "join", "read_dead_letters", "read_manifest", "read_shard",
           "read_shard_meta", "shard_name", "write_manifest", "write_shard"]

MANIFEST_NAME = "manifest.json"
SHARD_NAME = "codes-{index:05d}-of-{count:05d}.npz"
DEAD_LETTER_NAME = "dead-letter-{index:05d}-of-{count:05d}.jsonl"
FORMAT = "tfduch-code-shards"
FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"codes-(\d{5})-of-(\d{5})\.npz$")


class ShardError(DataError):
    """A shard folder, manifest or shard file is missing, corrupt or belongs to another model / input."""


def shard_name(index: int, count: int) -> str:
    return SHARD_NAME.format(index=index, count=count)


def dead_letter_name(index: int, count: int) -> str:
    return DEAD_LETTER_NAME.format(index=index, count=count)


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URI (``gs://``, ``s3://``, ...) that goes through Beam's FileSystems."""
    return "://" in str(path)


def join(folder: str | Path, name: str) -> str:
    """``folder/name`` for local folders and URIs alike."""
    folder = str(folder)
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else str(Path(folder) / name)


def inputs_digest(paths: Sequence[str]) -> str:
    """sha256 over the input list (one path per line): identifies a file list without storing it twice."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode("utf-8") + b"\n")
    return h.hexdigest()


def _write_bytes(path: str, data: bytes) -> None:
    if not is_remote(path):
        atomic_write_bytes(path, data)
        return
    from apache_beam.io.filesystems import FileSystems

    tmp = f"{path}.tmp-{hashlib.sha256(data).hexdigest()[:12]}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def _read_bytes(path: str) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def file_exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path).is_file()
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=json_default)


def write_shard(folder: str | Path, index: int, count: int, packed: np.ndarray, paths: Sequence[str],
                payloads: Sequence[dict[str, Any]], dead: Sequence[dict[str, Any]] = (),
                meta: dict[str, Any] | None = None) -> str:
    """Write shard ``index`` of ``count`` (its dead letters first, then its codes); returns the codes file."""
    packed = np.asarray(packed, np.uint8)
    if packed.ndim != 2 or len(packed) != len(paths) or len(paths) != len(payloads):
        raise ShardError(f"shard {index}: packed {packed.shape}, {len(paths)} paths and {len(payloads)} payloads "
                         "must have one row per item")
    lines = "".join(_dumps(d) + "\n" for d in dead)
    _write_bytes(join(folder, dead_letter_name(index, count)), lines.encode("utf-8"))
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "index": int(index), "count": int(count),
            "items": len(paths), "dead": len(dead), "packed_bytes": int(packed.shape[1]), **(meta or {})}
    buf = io.BytesIO()
    np.savez(buf, packed=packed, paths=np.asarray([str(p) for p in paths], dtype=np.str_),
             payloads=np.asarray([_dumps(p) for p in payloads], dtype=np.str_), meta=np.asarray(_dumps(info)))
    target = join(folder, shard_name(index, count))
    _write_bytes(target, buf.getvalue())
    return target


def _load(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(_read_bytes(str(path))), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("packed", "paths", "payloads", "meta")}
    except FileNotFoundError:
        raise ShardError(f"shard file not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # CRC, truncation
        raise ShardError(f"corrupt shard file {path}: {exc}") from None
    if arrays["packed"].dtype != np.uint8 or arrays["packed"].ndim != 2 \
            or not len(arrays["packed"]) == len(arrays["paths"]) == len(arrays["payloads"]):
        raise ShardError(f"corrupt shard file {path}: arrays do not describe one row per item")
    return arrays


def read_shard_meta(path: str | Path) -> dict[str, Any]:
    """The shard's ``meta`` JSON (index, count, items, dead, model_id, bits, inputs_sha256); validates the file."""
    return json.loads(str(_load(path)["meta"]))


def read_shard(path: str | Path) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """``(packed uint8 [n, K/8], paths, payload dicts)`` of one shard file (ShardError if it is corrupt)."""
    arrays = _load(path)
    return arrays["packed"], [str(p) for p in arrays["paths"]], [json.loads(str(p)) for p in arrays["payloads"]]


def read_dead_letters(folder: str | Path, index: int, count: int) -> list[dict[str, Any]]:
    """The dead-letter records of one shard (``[]`` if it had no bad inputs)."""
    text = _read_bytes(join(folder, dead_letter_name(index, count))).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    _write_bytes(join(folder, MANIFEST_NAME), (json.dumps(manifest, indent=2, default=json_default) + "\n").encode())


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's manifest (``bits``, ``model_id``, ``model``, ``num_shards``, ``input_glob``, ``status``, ...)."""
    path = join(folder, MANIFEST_NAME)
    if not file_exists(path):
        raise ShardError(f"no {MANIFEST_NAME} in {folder}: not a shard folder written by tfduch encode-archive")
    try:
        manifest = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ShardError(f"corrupt manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a tfduch code-shard manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ShardError(f"{path} has format version {manifest['format_version']}; this tfduch reads "
                         f"<= {FORMAT_VERSION}")
    return manifest


@dataclass(frozen=True)
class Shard:
    """One finished shard as read back."""

    index: int
    count: int
    path: str
    packed: np.ndarray
    paths: list[str]
    payloads: list[dict[str, Any]]


def iter_shards(folder: str | Path, require_complete: bool = True) -> Iterator[Shard]:
    """Yield the folder's shards in index order; with ``require_complete`` a missing shard is a ShardError.

    Why the check: an interrupted ``encode-archive`` leaves some shards unwritten; ingesting such a folder
    silently would index part of the archive. Re-running the same command completes it.
    """
    manifest = read_manifest(folder)
    count = int(manifest["num_shards"])
    if require_complete:
        missing = [i for i in range(count) if not file_exists(join(folder, shard_name(i, count)))]
        if missing:
            raise ShardError(f"{folder}: {len(missing)} of {count} shards are missing (first: "
                             f"{shard_name(missing[0], count)}); re-run the same tfduch encode-archive command "
                             "to finish it")
    for i in range(count):
        path = join(folder, shard_name(i, count))
        if not file_exists(path):
            continue
        packed, paths, payloads = read_shard(path)
        yield Shard(i, count, path, packed, paths, payloads)
