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


# ------------------------------------------------------------------------------------------------
# Export / edge (tests/export): a small trained run and one export of it with a tiny image encoder. The
# image encoder is a two-convolution stand-in with the real one's input and output shapes (TFLite
# conversion takes seconds, not minutes); the text encoder is the real MiniLM (the text signature needs
# its in-graph tokenizer). Built once per session, only by the tests that ask for them.
# ------------------------------------------------------------------------------------------------
TINY_BITS = 32
TINY_IMAGE_DIM = 1280


def make_tiny_run(out: Path, seed: int = 0) -> Path:
    """A finished run folder (config.yaml, model.json, model.weights.h5) for 1280-d image / 384-d text features."""
    from tfduch import runs
    from tfduch.config import load_config
    from tfduch.training.data import TrainingFeatures
    from tfduch.training.trainer import train

    rng = np.random.default_rng(seed)
    n = 64
    image = rng.normal(size=(n, TINY_IMAGE_DIM)).astype(np.float32)
    captions = rng.normal(size=(n, 2, 384)).astype(np.float32)
    features = TrainingFeatures(image, image[None] + 0.1, captions, np.full(n, 2), rng.integers(0, 2, n))
    cfg = load_config(None, [f"model.bits={TINY_BITS}", "model.hidden_dim=64", "train.epochs=1", "train.batch_size=32",
                             "features.image_encoder=lite0", "train.checkpoint=false", "train.tensorboard=false",
                             "train.verbose=0", f"output_dir={out}"])
    model, _ = train(cfg, features, out)
    runs.save_config(cfg, out)
    runs.save_model(model, cfg, out, num_train=n, encoders={}, dataset="random", dataset_fingerprint="f" * 64,
                    split_digest="d" * 16)
    return out


def tiny_image_encoder(size: int = 224):
    """conv 3×3/4 → BN → ReLU6 → conv 1×1 → global average pool: 1280-d, like EfficientNet-Lite0's output."""
    import keras

    inputs = keras.Input((size, size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=4, use_bias=False, name="stem_conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(TINY_IMAGE_DIM, 1, name="top_conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="tiny_image_encoder")


@pytest.fixture(scope="session")
def tiny_encoders():
    from tfduch.encoders.minilm import build_text_encoder
    from tfduch.export import Encoders

    return Encoders(tiny_image_encoder(), build_text_encoder(), "lite0", {})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def edge_export(tmp_path_factory, tiny_run, tiny_encoders):
    """(base dir, version dir) of one export with TFLite float32 + int8, both under enforced floors."""
    from tfduch.export import export_model
    from tfduch.export.tflite import TFLiteOptions

    base = tmp_path_factory.mktemp("edge-exports")
    options = TFLiteOptions(variants=("float32", "int8"), calibration_images=8, bias_correction_images=0,
                            check_images=8, min_bit_agreement={"float32": 0.99, "int8": 0.5}, progress=False)
    path = export_model(tiny_run, base, "edge", encoders=tiny_encoders, tflite=options)
    return base, path


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
