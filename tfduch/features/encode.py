"""Run the frozen encoders over a dataset: every image once per view, every caption once.

Encoding is the slow part of the pipeline on a CPU (tens of images per second), which is why its
results go to :mod:`tfduch.features.cache` and are never recomputed for training or evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfduch.data.images import load_image

SOURCE_SIZE = 256  # images are brought to the UC Merced size before augmentation (crop 200 → resize)


def _decode(path: Path) -> np.ndarray:
    image = load_image(path)
    if image.shape[0] != SOURCE_SIZE or image.shape[1] != SOURCE_SIZE:
        image = tf.image.resize(image, (SOURCE_SIZE, SOURCE_SIZE), antialias=True).numpy()
    return image.astype(np.float32)


def _batches(paths: Sequence[Path], batch_size: int, workers: int) -> Iterator[np.ndarray]:
    """Decode images in a small thread pool (Pillow releases the GIL) while the model runs."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = pool.map(lambda chunk: np.stack([_decode(p) for p in chunk]), chunks)
        yield from pending


def encode_images(paths: Sequence[Path], encoder: tf.keras.Model, augmentation: Callable[..., tf.Tensor],
                  batch_size: int = 32, desc: str = "images", workers: int = 2, progress: bool = True
                  ) -> np.ndarray:
    """Features ``[N, D]`` of ``encoder(augmentation(image))`` for each path, in order."""

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor) -> tf.Tensor:
        return encoder(augmentation(x, training=True), training=False)

    out = []
    with tqdm(total=len(paths), desc=f"Encoding {desc}", unit="img", disable=not progress) as bar:
        for batch in _batches(list(paths), batch_size, workers):
            out.append(step(tf.constant(batch)).numpy())
            bar.update(len(batch))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def encode_captions(captions: Sequence[Sequence[str]], encode_texts: Callable[[list[str]], np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """All captions of every item → (``[N, C, D]`` padded features, ``[N]`` caption counts)."""
    counts = np.array([len(c) for c in captions], dtype=np.int32)
    flat = [text for group in captions for text in group]
    vectors = encode_texts(flat)
    width = int(counts.max()) if len(counts) else 0
    out = np.zeros((len(captions), width, vectors.shape[1] if len(vectors) else 0), np.float32)
    start = 0
    for i, c in enumerate(counts):
        out[i, :c] = vectors[start : start + c]
        out[i, c:] = vectors[start]  # padding repeats the first caption; counts says what is real
        start += c
    return out, counts
