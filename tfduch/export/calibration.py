"""Images that calibrate and check the TFLite variants, and the float codes they are checked against.

Calibration images set int8 activation ranges (and feed the bias correction); check images, disjoint
from them, measure each variant's bit agreement with the float graph. Real dataset images when a dataset
folder or an image folder is given, else smooth synthetic colour fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfduch.export.graph import CodeExport, binarize
from tfduch.export.layout import ExportError

__all__ = ["preprocess_image_bytes", "synthetic_images", "dataset_images", "folder_images", "bit_agreement",
           "reference_codes", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def preprocess_image_bytes(module: CodeExport, blobs: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
    """Encoded images → the float32 encoder input, with the SavedModel's own decode + clean view."""
    chunks = [module.preprocess_images(tf.constant(list(blobs[i : i + batch_size]), tf.string)).numpy()
              for i in range(0, len(blobs), batch_size)]
    s = module.image_size
    return np.concatenate(chunks) if chunks else np.zeros((0, s, s, 3), np.float32)


def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random colour fields with texture: natural-ish statistics when no real images exist."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 8, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (size, size), method="bicubic").numpy()
    return np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.float32)


def dataset_images(module: CodeExport, root: str | Path, n: int, seed: int, skip: int = 0,
                   progress: bool = False) -> tuple[np.ndarray, str]:
    """Images ``skip .. skip + n`` of a seeded permutation of a dataset folder, preprocessed; and a description.

    Calibration takes ``skip=0`` and check images the next ones, so the two never overlap.
    """
    from tfduch.data.resolve import open_dataset

    dataset = open_dataset(root)
    order = np.random.default_rng(seed).permutation(len(dataset.samples))[skip : skip + n]
    paths = [dataset.samples[i].path for i in order]
    blobs = [p.read_bytes() for p in tqdm(paths, desc="read images", disable=not progress)]
    return preprocess_image_bytes(module, blobs), f"{len(paths)} {dataset.name} images"


def folder_images(module: CodeExport, folder: str | Path, n: int | None = None,
                  progress: bool = False) -> tuple[np.ndarray, str]:
    """The first ``n`` (by name; ``None``: all) image files of ``folder``, preprocessed; and a description."""
    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f"image folder not found: {root}")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:n]
    if not paths:
        raise ExportError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    blobs = [p.read_bytes() for p in tqdm(paths, desc=f"read {root.name}", disable=not progress)]
    try:
        images = preprocess_image_bytes(module, blobs)
    except tf.errors.InvalidArgumentError as exc:
        raise ExportError(f"an image in {root} cannot be decoded: {exc.message.splitlines()[0]}") from exc
    return images, f"{len(paths)} images of {root}"


def bit_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of code bits that are equal."""
    return float(np.mean(np.asarray(a) == np.asarray(b))) if np.size(a) else float("nan")


def reference_codes(module: CodeExport, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The SavedModel graph's codes for preprocessed images (the image signature minus decoding)."""
    chunks = [binarize(module.image_head(module.image_encoder(images[i : i + batch_size], training=False),
                                         training=False)).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, module.bits), np.int8)
