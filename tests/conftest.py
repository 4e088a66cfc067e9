"""Shared fixtures: small synthetic data so the core suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """The UC Merced captions dataset: $TFDUCH_DATA, else ../shared/data/ucm_captions beside the repo."""
    root = Path(os.environ.get("TFDUCH_DATA", REPO.parent / "shared" / "data" / "ucm_captions"))
    return root if (root / "captions.json").is_file() else None


@pytest.fixture
def ucm_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real UCM data not found: set TFDUCH_DATA or place it at ../shared/data/ucm_captions")
    return root


def clustered_features(n: int = 240, classes: int = 6, captions: int = 3, seed: int = 0,
                       image_dim: int = 48, text_dim: int = 32, noise: float = 1.0,
                       labels: np.ndarray | None = None):
    """Paired features where image and text carry the class through different random linear maps.

    ``labels`` (``[n]``) fixes the classes, e.g. to give a synthetic dataset's items features.
    """
    from tfduch.training.data import TrainingFeatures

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, classes, n)
    labels = drawn if labels is None else np.asarray(labels)
    latent = rng.normal(size=(classes, 16))
    a = rng.normal(size=(16, image_dim))
    b = rng.normal(size=(16, text_dim))
    z = latent[labels]
    image = z @ a + noise * rng.normal(size=(n, image_dim))
    image_aug = image[None] + 0.3 * noise * rng.normal(size=(1, n, image_dim))
    caps = (z @ b)[:, None] + noise * rng.normal(size=(n, captions, text_dim))
    feats = TrainingFeatures(image.astype(np.float32), image_aug.astype(np.float32), caps.astype(np.float32),
                             np.full(n, captions), rng.integers(0, captions, n))
    return feats, labels


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """ONE embedded Milvus server (the ``milvus`` package) for the whole session, stopped at its end.

    Skips, saying why, where the optional ``milvus`` extra (pymilvus + milvus) is not installed.
    """
    try:
        import milvus  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the milvus extra is not installed ({exc}): pip install '.[milvus]' && "
                    "pip install --no-deps milvus==2.3.5")
    from tfduch.index.milvus import EmbeddedMilvus

    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-server")).start()
    yield server
    server.stop()
