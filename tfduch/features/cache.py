"""Feature cache: each image and caption is encoded once per view and reused by every run.

An entry is one ``.npz`` file per (dataset, encoder, view) holding the features and a metadata record
(encoder id with its weights digest, dataset fingerprint, view spec, seed, row count). On load the
record is compared with what the caller asks for; any difference (a changed caption or image, other
weights, another augmentation) recomputes the entry. Features cover every image of the dataset, not
one split, so changing the split seed reuses them. Entries are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.data.karpathy import CaptionDataset
from tfduch.io import atomic_save_npz

FORMAT_VERSION = 1


@dataclass
class CachedArray:
    """Features plus the metadata they were computed with."""

    data: np.ndarray
    meta: dict[str, Any]
    extra: dict[str, np.ndarray]
    hit: bool


class FeatureCache:
    """A folder of feature entries keyed by dataset fingerprint, encoder id and view."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def entry_path(self, dataset: CaptionDataset, kind: str, encoder_id: str, view: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{kind}-{encoder_id}-{view}")
        return self.root / "features" / f"{dataset.name}-{dataset.fingerprint()[:16]}" / f"{safe}.npz"

    def load(self, path: Path, expected: dict[str, Any]) -> CachedArray | None:
        """The entry at ``path`` if its metadata matches ``expected``; ``None`` if absent or stale."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                if any(meta.get(k) != v for k, v in expected.items()):
                    return None
                extra = {k: npz[k] for k in npz.files if k not in ("meta", "data")}
                return CachedArray(npz["data"], meta, extra, hit=True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None  # unreadable or truncated: recompute rather than fail

    def get_or_compute(self, dataset: CaptionDataset, kind: str, encoder_id: str, view: str,
                       compute: Any, extra_meta: dict[str, Any] | None = None) -> CachedArray:
        """Return cached features or compute them with ``compute() -> (data, extra_arrays)`` and store them."""
        path = self.entry_path(dataset, kind, encoder_id, view)
        expected = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "encoder_id": encoder_id,
            "view": view,
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint(),
            "num_items": len(dataset),
            **(extra_meta or {}),
        }
        cached = self.load(path, expected)
        if cached is not None:
            return cached
        data, extra = compute()
        if len(data) != len(dataset):
            raise RuntimeError(f"encoder returned {len(data)} rows for {len(dataset)} items ({kind}/{view})")
        meta = {**expected, "shape": list(data.shape)}
        atomic_save_npz(path, data=data, meta=np.array(json.dumps(meta)), **extra)
        return CachedArray(data, meta, extra, hit=False)
