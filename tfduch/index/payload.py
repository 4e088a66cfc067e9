"""Per-item payloads (file path, caption, class, ...) stored as JSON lines with a row-offset table.

An archive index may hold millions of items and a search needs the payload of only k of them, so the
payloads stay encoded: one UTF-8 JSON object per row in a byte buffer (memory-mapped from the index
file) plus ``int64`` offsets. Reading row ``i`` decodes one line; nothing is parsed at load time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tfduch.index.errors import IndexFileError

__all__ = ["PayloadStore"]


def _encode(payload: dict[str, Any] | None) -> bytes:
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise TypeError(f"a payload must be a dict, got {type(payload).__name__}")
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


class PayloadStore:
    """Row-addressed JSON payloads: ``store[i]`` → dict; appending and row selection keep rows encoded."""

    def __init__(self, data: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        self.data = np.zeros(0, np.uint8) if data is None else data
        self.offsets = np.zeros(1, np.int64) if offsets is None else offsets
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != len(self.data) or np.any(np.diff(self.offsets) < 0):
            raise IndexFileError("payload offsets do not describe the payload bytes (corrupt index)")

    @classmethod
    def from_dicts(cls, payloads: Iterable[dict[str, Any] | None]) -> PayloadStore:
        return cls().extend(payloads)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> dict[str, Any]:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        try:
            return json.loads(bytes(self.data[start:end]).decode("utf-8")) if end > start else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise IndexFileError(f"payload of row {row} is not valid JSON (corrupt index): {exc}") from None

    def rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        return [self[int(r)] for r in rows]

    def extend(self, payloads: Iterable[dict[str, Any] | None]) -> PayloadStore:
        """Append payloads in order (``None`` → ``{}``); returns ``self``."""
        blobs = [_encode(p) for p in payloads]
        if blobs:
            lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
            self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lengths)])
            self.data = np.concatenate([self.data, np.frombuffer(b"".join(blobs), np.uint8)])
        return self

    def take(self, rows: np.ndarray) -> PayloadStore:
        """A new store with the given rows, in that order (used when compacting)."""
        rows = np.asarray(rows, np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if len(rows) == len(self) and np.array_equal(rows, np.arange(len(self))):
            return PayloadStore(np.array(self.data), offsets)
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return PayloadStore(np.asarray(self.data)[index], offsets)
