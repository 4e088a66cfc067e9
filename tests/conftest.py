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


def make_run(out: Path, seed: int = 0, bits: int = 32) -> Path:
    """A finished run folder written through tfduch.runs, with real-encoder (lite0, MiniLM) feature sizes."""
    from tfduch import runs
    from tfduch.config import load_config
    from tfduch.encoders.efficientnet_lite import image_encoder_id
    from tfduch.encoders.minilm import text_encoder_id
    from tfduch.training.data import TrainingFeatures
    from tfduch.training.trainer import train

    rng = np.random.default_rng(seed)
    n = 64
    image = rng.normal(size=(n, 1280)).astype(np.float32)
    captions = rng.normal(size=(n, 2, 384)).astype(np.float32)
    features = TrainingFeatures(image, image[None] + 0.1, captions, np.full(n, 2), rng.integers(0, 2, n))
    cfg = load_config(None, [f"model.bits={bits}", "model.hidden_dim=256", "train.epochs=1", "train.batch_size=32",
                             "features.image_encoder=lite0",
                             "train.checkpoint=false", "train.tensorboard=false", "train.verbose=0",
                             f"output_dir={out}"])
    model, _ = train(cfg, features, out)
    runs.save_config(cfg, out)
    runs.save_model(model, cfg, out, num_train=n,
                    encoders={"image": image_encoder_id("lite0"), "text": text_encoder_id()},
                    dataset="random", dataset_fingerprint="f" * 64, split_digest="d" * 16)
    return out
