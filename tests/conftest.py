"""Shared fixtures: small synthetic data so the core suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
def small_run(tmp_path_factory):
    """A run trained one epoch on random 1280-d / 384-d features (sized for the real encoders); read-only."""
    return make_run(tmp_path_factory.mktemp("run"))


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


def fail_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int, error: BaseException) -> Callable:
    """Make ``owner.name`` raise ``error`` on its ``call``-th call (1-based) and pass through otherwise.

    The Milvus tests use it to lose the connection part-way through a load; returns the real attribute so a test
    can put it back with ``monkeypatch.setattr(owner, name, real)`` and resume.
    """
    real = getattr(owner, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return real


class PixelEncoder:
    """16-bit codes from a 4x4 grid of mean intensities: deterministic, model-free, fast.

    The archive tests (Beam pipelines, the Milvus sink, geo tiles) check bookkeeping, which does not depend on the
    model; ``model_id`` tells runs of different "models" apart.
    """

    def __init__(self, model_id: str = "pixels-v1") -> None:
        self.metadata = {"bits": 16, "model_id": model_id}

    def encode_images(self, images: list[bytes]) -> np.ndarray:
        from tfduch.data.images import load_image_bytes

        rows = []
        for data in images:
            grey = load_image_bytes(data, size=(16, 16)).mean(axis=2)
            cells = grey.reshape(4, 4, 4, 4).mean(axis=(1, 3)).ravel()
            rows.append(np.where(cells >= np.median(cells), 1, -1))
        return np.asarray(rows, np.int8).reshape(len(images), 16)


def tiny_duch_config(output: str | Path, *, epochs: int = 3, batch_size: int = 64, **train: Any):
    """A quick DUCH config (16 bits, 64 hidden units, lr 1e-3, silent); ``train`` overrides ``cfg.train`` fields."""
    from tfduch.config import Config

    cfg = Config(output_dir=str(output))
    cfg.model.bits = 16
    cfg.model.hidden_dim = 64
    cfg.train.epochs = epochs
    cfg.train.batch_size = batch_size
    cfg.train.lr = 1e-3
    cfg.train.verbose = "0"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def cli_export(run: Path, base: Path, encoders: Any, *args: str) -> tuple[int, str, str]:
    """``tfduch export --run RUN --base BASE ARGS`` in-process with ``encoders`` instead of building the real ones.

    Returns (exit code, stdout, stderr).
    """
    from tfduch import cli
    from tfduch.export import savedmodel

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(savedmodel.Encoders, "build", classmethod(lambda cls, *a, **k: encoders))
        code = cli.main(["export", "--run", str(run), "--base", str(base), *args])
    return code, out.getvalue(), err.getvalue()


def start_chromium(window_size: str, *flags: str):
    """A headless Chromium WebDriver for the page tests, or a skip that says what to install."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver_path).exists()):
        pytest.skip("headless Chromium test skipped: install it with `apt-get install -y chromium chromium-driver`")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("headless Chromium test skipped: `pip install selenium` to drive Chromium")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *flags,
                 f"--window-size={window_size}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


# ------------------------------------------------------------------------------ serving tests (toy SavedModels)
def salted_hash_bits(salt: Any, text: Any, bits: int) -> Any:
    """{0, 1} bits of a salted string hash, inside a toy SavedModel's ``encode_text`` (cheap, salt-dependent codes)."""
    import tensorflow as tf

    hashed = tf.strings.to_hash_bucket_fast(tf.strings.join([salt, text], "|"), 2**31 - 1)
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(hashed[:, None], tf.range(bits, dtype=tf.int64)), 1)


def install_version(source: Path, model_dir: Path, version: int) -> Path:
    """Install a SavedModel version the way an atomic export does: copy to a temp name, then rename."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}"
    shutil.copytree(source, tmp)
    return tmp.rename(model_dir / str(version))


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def run_in_threads(target: Callable[[int], Any], n: int) -> None:
    """Call ``target(0)`` … ``target(n - 1)`` at once, one thread each (so a batcher sees them together); wait."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
