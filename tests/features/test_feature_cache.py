"""The feature cache recomputes exactly when its inputs change, and never half-writes an entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfduch.data import load_dataset
from tfduch.data.synthetic import make_synthetic_dataset
from tfduch.features.cache import FeatureCache
from tfduch.features.encode import encode_captions


@pytest.fixture
def dataset(tmp_path: Path):
    return load_dataset(make_synthetic_dataset(tmp_path / "data", n_classes=2, per_class=3, image_size=16))


def _counting(calls: list, rows: int, value: float = 1.0):
    def compute():
        calls.append(1)
        return np.full((rows, 4), value, np.float32), {"counts": np.arange(rows)}
    return compute


def test_hit_miss_and_invalidation(tmp_path: Path, dataset) -> None:
    cache = FeatureCache(tmp_path / "cache")
    calls: list = []
    first = cache.get_or_compute(dataset, "image", "enc-a", "none", _counting(calls, len(dataset)))
    again = cache.get_or_compute(dataset, "image", "enc-a", "none", _counting(calls, len(dataset)))
    assert (first.hit, again.hit, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again.data, first.data)
    np.testing.assert_array_equal(again.extra["counts"], np.arange(len(dataset)))
    assert again.meta["encoder_id"] == "enc-a" and again.meta["dataset_fingerprint"] == dataset.fingerprint()
    # another encoder or view is another entry
    cache.get_or_compute(dataset, "image", "enc-b", "none", _counting(calls, len(dataset)))
    cache.get_or_compute(dataset, "image", "enc-a", "duch-s0", _counting(calls, len(dataset)))
    assert len(calls) == 3


def test_changed_caption_invalidates(tmp_path: Path, dataset) -> None:
    cache = FeatureCache(tmp_path / "cache")
    calls: list = []
    cache.get_or_compute(dataset, "text", "t", "captions", _counting(calls, len(dataset)))
    js = dataset.json_path
    data = json.loads(js.read_text())
    data["images"][0]["sentences"][0]["raw"] = "a completely different caption"
    js.write_text(json.dumps(data))
    changed = load_dataset(js.parent)
    entry = cache.get_or_compute(changed, "text", "t", "captions", _counting(calls, len(changed), 2.0))
    assert len(calls) == 2 and not entry.hit and entry.data[0, 0] == 2.0


def test_corrupt_entry_is_recomputed(tmp_path: Path, dataset) -> None:
    cache = FeatureCache(tmp_path / "cache")
    calls: list = []
    cache.get_or_compute(dataset, "image", "e", "v", _counting(calls, len(dataset)))
    cache.entry_path(dataset, "image", "e", "v").write_bytes(b"truncated")
    entry = cache.get_or_compute(dataset, "image", "e", "v", _counting(calls, len(dataset)))
    assert len(calls) == 2 and entry.data.shape == (len(dataset), 4)


def test_wrong_row_count_is_an_error_and_nothing_is_stored(tmp_path: Path, dataset) -> None:
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="rows"):
        cache.get_or_compute(dataset, "image", "e", "v", _counting([], len(dataset) - 1))
    assert not cache.entry_path(dataset, "image", "e", "v").exists()


def test_encode_captions_pads_and_counts() -> None:
    data, counts = encode_captions([["a", "b"], ["c"]], lambda texts: np.array([[ord(t)] for t in texts], np.float32))
    assert data.shape == (2, 2, 1) and counts.tolist() == [2, 1]
    assert data[0, :, 0].tolist() == [97, 98] and data[1, 0, 0] == 99
