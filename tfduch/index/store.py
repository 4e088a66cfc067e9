"""An archive index on disk: one file holding the image and caption collections and their metadata.

Why one file: ``os.replace`` swaps a file atomically, so a save that fails half-way (disk full, crash,
Ctrl-C) leaves the previous index untouched, and a reader never sees a mix of two versions. The layout
lets large arrays be memory-mapped instead of read:

======  ==================================================================================
bytes   content
======  ==================================================================================
0–7     magic ``TFDUCHIX``
8–11    format version (uint32, little-endian)
12–15   reserved (0)
16–23   header length H (uint64, little-endian)
24–55   sha256 of the header bytes
56–     header: UTF-8 JSON (metadata, and per collection its config and section table)
…       sections, each 64-byte aligned: packed codes, ids, payload bytes, payload offsets,
        tombstones, serialized backend structure; each with its sha256 in the section table
======  ==================================================================================

Loading checks the magic, the header checksum and every section's sha256 (``verify=False`` skips the
section hashes), then maps the sections read-only (``mmap=True``) or reads them. The metadata records
code length, model id, item counts, backend and a checksum over all sections; :meth:`ArchiveIndex.
check_compatible` refuses queries encoded by another model or with another code length.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.index.backends import backend_from_config, make_backend
from tfduch.index.core import HammingIndex, Hit
from tfduch.index.errors import IncompatibleIndexError, IndexFileError, SearchError
from tfduch.index.payload import PayloadStore
from tfduch.io import atomic_path

__all__ = ["COLLECTIONS", "FORMAT_VERSION", "ArchiveIndex", "load_index"]

MAGIC = b"TFDUCHIX"
FORMAT_VERSION = 1
COLLECTIONS: tuple[str, ...] = ("image", "text")
_PREAMBLE = struct.Struct("<8sII Q 32s")  # magic, version, reserved, header length, header sha256
_ALIGN = 64


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _raw(array: np.ndarray) -> memoryview:
    """The bytes of an array (also of empty ones) without copying a contiguous array."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(_raw(array)).hexdigest()


class ArchiveIndex:
    """The ``image`` and ``text`` collections of an archive plus the metadata of the model that encoded it.

    Create one with :meth:`create`, fill it with :meth:`add`, persist it with :meth:`save` and open it
    with :func:`load_index`. Searching goes through a collection: ``index.search(codes, k, "image")``.
    """

    def __init__(self, metadata: dict[str, Any], collections: dict[str, HammingIndex],
                 path: Path | None = None) -> None:
        self.metadata = metadata
        self.collections = collections
        self.path = path

    @classmethod
    def create(cls, bits: int, model: dict[str, Any] | None = None, backend: str = "flat",
               collections: tuple[str, ...] = COLLECTIONS, **backend_params: Any) -> ArchiveIndex:
        """An empty index for ``bits``-bit codes of ``model`` (a query encoder's metadata; None: unknown)."""
        model = dict(model or {})
        if model.get("bits") is not None and int(model["bits"]) != int(bits):
            raise IncompatibleIndexError(f"model produces {model['bits']}-bit codes, index asked for {bits}")
        meta = {"bits": int(bits), "model_id": model.get("model_id"), "model": model,
                "created_at": now_iso(), "updated_at": None}
        return cls(meta, {name: HammingIndex(bits, make_backend(backend, bits, **backend_params))
                          for name in collections})

    # ------------------------------------------------------------------------------------- properties
    @property
    def bits(self) -> int:
        return int(self.metadata["bits"])

    @property
    def model_id(self) -> str | None:
        return self.metadata.get("model_id")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(c)}" for n, c in self.collections.items())
        return f"ArchiveIndex({self.path or 'unsaved'}, {self.bits} bits, model {self.model_id}, {sizes})"

    def collection(self, name: str) -> HammingIndex:
        try:
            return self.collections[name]
        except KeyError:
            raise SearchError(f"{self._where()} has no {name!r} collection (it holds: "
                              f"{', '.join(self.collections) or 'nothing'})") from None

    def _where(self) -> str:
        return f"index {self.path}" if self.path else "the index"

    # ------------------------------------------------------------------------------------ compatibility
    def check_compatible(self, model: dict[str, Any]) -> None:
        """Refuse queries from a model with another code length or model id (clear, actionable error)."""
        bits = model.get("bits")
        if bits is not None and int(bits) != self.bits:
            raise IncompatibleIndexError(
                f"{self._where()} holds {self.bits}-bit codes but the query model {model.get('model_id')} "
                f"produces {bits}-bit codes: query with the model that built the index, or rebuild it")
        mine, theirs = self.model_id, model.get("model_id")
        if mine is not None and mine != theirs:
            built = (self.metadata.get("model") or {}).get("source") or {}
            raise IncompatibleIndexError(
                f"{self._where()} was built with model {mine} ({built.get('kind', '?')} "
                f"{built.get('path', '?')}) but the queries come from model {theirs} "
                f"({(model.get('source') or {}).get('path', '?')}): codes of different models are not "
                "comparable; query with the model that built the index, or rebuild the index")

    # -------------------------------------------------------------------------------------- searching
    def search(self, codes: np.ndarray, k: int, target: str = "image") -> list[list[Hit]]:
        """The k nearest items of collection ``target`` for each query code (±1 ``[Q, K]`` or packed)."""
        return self.collection(target).search_hits(codes, k)

    def add(self, collection: str, codes: np.ndarray, payloads: list[dict[str, Any]] | None = None
            ) -> np.ndarray:
        """Append items to a collection; returns their ids."""
        ids = self.collection(collection).add(codes, payloads)
        self.metadata["updated_at"] = now_iso()
        return ids

    def remove(self, collection: str, ids: list[int]) -> int:
        n = self.collection(collection).remove(ids)
        self.metadata["updated_at"] = now_iso()
        return n

    def info(self) -> dict[str, Any]:
        """Metadata plus per-collection counts, backend and sizes (what ``tfduch index info`` prints)."""
        out = dict(self.metadata)
        out["collections"] = {n: c.get_config() for n, c in self.collections.items()}
        out["count"] = sum(len(c) for c in self.collections.values())
        if self.path is not None and self.path.exists():
            size = self.path.stat().st_size
            out["file"] = {"path": str(self.path), "bytes": size,
                           "bytes_per_item": round(size / max(out["count"], 1), 1)}
        return out

    # ------------------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the index atomically (temporary file + ``os.replace``); returns the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise IndexFileError("no path to save the index to")
        if target.exists() and target.is_dir():
            raise IndexFileError(f"cannot save the index to {target}: it is a directory")
        sections: list[tuple[int, np.ndarray]] = []
        table: dict[str, Any] = {}
        offset = 0
        digests = hashlib.sha256()
        for name, coll in self.collections.items():
            arrays = {"codes": coll.codes, "ids": coll.ids, "payload_data": coll.payloads.data,
                      "payload_offsets": coll.payloads.offsets}
            if coll.removed is not None:
                arrays["removed"] = coll.removed
            state = coll.backend.state()
            if state is not None:
                arrays["backend_state"] = state
            entries = {}
            for key, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                digest = _sha256(arr)
                digests.update(f"{name}/{key}:{digest}".encode())
                entries[key] = {"offset": offset, "nbytes": arr.nbytes, "dtype": arr.dtype.str,
                                "shape": list(arr.shape), "sha256": digest}
                sections.append((offset, arr))
                offset = _align(offset + arr.nbytes)
            table[name] = {"config": coll.get_config(), "sections": entries}
        meta = dict(self.metadata)
        meta["count"] = {n: len(c) for n, c in self.collections.items()}
        meta["backend"] = next(iter(self.collections.values())).backend.get_config() if self.collections else None
        meta["checksum"] = digests.hexdigest()
        header = json.dumps({"format": "tfduch-index", "format_version": FORMAT_VERSION, "metadata": meta,
                             "collections": table}, ensure_ascii=False, default=str).encode("utf-8")
        data_start = _align(_PREAMBLE.size + len(header))
        with atomic_path(target, suffix=".tfidx") as tmp:
            with open(tmp, "wb") as f:
                f.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), hashlib.sha256(header).digest()))
                f.write(header)
                for start, arr in sections:
                    f.seek(data_start + start)
                    f.write(_raw(arr))
                f.truncate(max(f.tell(), data_start))
                f.flush()
                os.fsync(f.fileno())
        self.metadata = meta
        self.path = target
        return target


# --------------------------------------------------------------------------------------------- loading
def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        pre = f.read(_PREAMBLE.size)
        if len(pre) < _PREAMBLE.size or not pre.startswith(MAGIC):
            raise IndexFileError(f"{path} is not a tfduch index (no {MAGIC.decode()} header); "
                                 "was it written by `tfduch index build`?")
        _, version, _, length, digest = _PREAMBLE.unpack(pre)
        if version != FORMAT_VERSION:
            raise IndexFileError(f"{path} uses index format {version}; this tfduch reads format {FORMAT_VERSION}")
        if _PREAMBLE.size + length > size:
            raise IndexFileError(f"{path} is truncated: header of {length} bytes does not fit in {size} bytes")
        header = f.read(length)
    if hashlib.sha256(header).digest() != digest:
        raise IndexFileError(f"{path} is corrupt: the header checksum does not match")
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IndexFileError(f"{path} is corrupt: unreadable header ({exc})") from None
    return parsed, _align(_PREAMBLE.size + length), size


def _section(path: Path, entry: dict[str, Any], data_start: int, size: int, name: str, mmap: bool,
             verify: bool) -> np.ndarray:
    try:
        dtype, shape = np.dtype(entry["dtype"]), tuple(int(s) for s in entry["shape"])
        start, nbytes = data_start + int(entry["offset"]), int(entry["nbytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFileError(f"{path} is corrupt: bad section entry {name} ({exc})") from None
    if start + nbytes > size:
        raise IndexFileError(f"{path} is truncated: section {name} ends at byte {start + nbytes} of {size}")
    if int(np.prod(shape)) * dtype.itemsize != nbytes:
        raise IndexFileError(f"{path} is corrupt: section {name} has {nbytes} bytes for shape {shape}")
    if nbytes == 0:
        arr = np.zeros(shape, dtype)
    elif mmap:
        arr = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
    else:
        with open(path, "rb") as f:
            f.seek(start)
            arr = np.frombuffer(f.read(nbytes), dtype=dtype).reshape(shape).copy()
    if verify and _sha256(arr) != entry.get("sha256"):
        raise IndexFileError(f"{path} is corrupt: checksum mismatch in section {name} "
                             "(the file was modified or damaged after it was written; rebuild it)")
    return arr


def load_index(path: str | os.PathLike[str], *, model: dict[str, Any] | None = None, mmap: bool = True,
               verify: bool = True) -> ArchiveIndex:
    """Open an index file; with ``model`` (a query encoder's metadata) refuse an incompatible one.

    ``mmap=True`` maps codes, ids and payloads read-only instead of reading them, so opening a large
    index is fast and its pages are shared between processes; ``verify`` checks every section's sha256.
    """
    path = Path(path)
    if not path.exists():
        raise IndexFileError(f"index file not found: {path}")
    if path.is_dir():
        raise IndexFileError(f"{path} is a directory, not an index file")
    parsed, data_start, size = _read_header(path)
    try:
        meta, table = parsed["metadata"], parsed["collections"]
        bits = int(meta["bits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFileError(f"{path} is corrupt: header lacks {exc}") from None
    collections = {}
    for name, entry in table.items():
        sec = {key: _section(path, e, data_start, size, f"{name}/{key}", mmap, verify)
               for key, e in entry["sections"].items()}
        config = entry["config"]
        try:
            collections[name] = HammingIndex(
                bits, backend_from_config(config["backend"]), codes=sec["codes"], ids=sec["ids"],
                payloads=PayloadStore(sec["payload_data"], sec["payload_offsets"]), removed=sec.get("removed"),
                next_id=config.get("next_id"), backend_state=sec.get("backend_state"))
        except (KeyError, SearchError, IndexFileError) as exc:
            raise IndexFileError(f"{path} is corrupt: collection {name!r} is inconsistent ({exc})") from None
    index = ArchiveIndex(meta, collections, path)
    if model is not None:
        index.check_compatible(model)
    return index
