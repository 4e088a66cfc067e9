"""Training batches built from cached features.

Everything lives in memory as tensors; a batch is a gather by item index. Randomness (shuffle, which
augmented image view, which second caption) is seeded and redrawn every epoch, so a run is
reproducible and the second views still vary across epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass
class TrainingFeatures:
    """Frozen features of the training items, aligned by row."""

    image: np.ndarray  # [N, Di] clean view
    image_aug: np.ndarray  # [V, N, Di] augmented views (one is drawn per item and epoch)
    captions: np.ndarray  # [N, C, Dt] every caption of each item (padded)
    caption_counts: np.ndarray  # [N] number of real captions per item
    caption_choice: np.ndarray  # [N] the protocol caption of each item
    text_aug: np.ndarray | None = None  # [N, Dt] offline-augmented protocol caption; None: other caption
    # Noise-robust methods (CHNR): the trusted pairs and the class ids known for them (-1 elsewhere).
    clean_mask: np.ndarray | None = None  # [N] bool
    labels: np.ndarray | None = None  # [N] int

    def __post_init__(self) -> None:
        n = len(self.image)
        if self.image_aug.ndim == 2:
            self.image_aug = self.image_aug[None]
        shapes = {"image_aug": self.image_aug.shape[1], "captions": len(self.captions),
                  "caption_counts": len(self.caption_counts), "caption_choice": len(self.caption_choice)}
        for name in ("text_aug", "clean_mask", "labels"):
            if getattr(self, name) is not None:
                shapes[name] = len(getattr(self, name))
        bad = {k: v for k, v in shapes.items() if v != n}
        if bad:
            raise ValueError(f"training features are not aligned: image has {n} rows, but {bad}")
        if np.any(self.caption_counts < 1):
            raise ValueError("every training item needs at least one caption")

    def __len__(self) -> int:
        return len(self.image)

    @property
    def text(self) -> np.ndarray:
        """The protocol caption feature of every item, ``[N, Dt]``."""
        return self.captions[np.arange(len(self)), self.caption_choice]


def make_dataset(features: TrainingFeatures, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Shuffled batches of ``{index, image, image_aug, text, text_aug}`` features, reshuffled each epoch.

    With ``clean_mask`` / ``labels`` set, batches also carry ``clean`` (bool) and ``label`` (int32).
    """
    n = len(features)
    image = tf.constant(features.image, tf.float32)
    image_aug = tf.constant(features.image_aug, tf.float32)
    captions = tf.constant(features.captions, tf.float32)
    counts = tf.constant(features.caption_counts, tf.int32)
    choice = tf.constant(features.caption_choice, tf.int32)
    text_aug = None if features.text_aug is None else tf.constant(features.text_aug, tf.float32)
    n_views = int(features.image_aug.shape[0])
    clean = None if features.clean_mask is None else tf.constant(features.clean_mask, tf.bool)
    labels = None if features.labels is None else tf.constant(features.labels, tf.int32)

    def gather(index: tf.Tensor, rnd: tf.Tensor) -> dict[str, tf.Tensor]:
        index = tf.cast(index, tf.int32)
        batch_seed = tf.stack([tf.cast(rnd % 2**31, tf.int32), tf.constant(seed, tf.int32)])
        u = tf.random.stateless_uniform([2, tf.shape(index)[0]], seed=batch_seed)
        view = tf.minimum(tf.cast(u[0] * n_views, tf.int32), n_views - 1)
        chosen = tf.gather(choice, index)
        rows = {"index": index, "image": tf.gather(image, index),
                "image_aug": tf.gather_nd(image_aug, tf.stack([view, index], axis=1)),
                "text": tf.gather_nd(captions, tf.stack([index, chosen], axis=1))}
        if text_aug is not None:
            rows["text_aug"] = tf.gather(text_aug, index)
        else:
            # A different caption of the same image: offset 1..count-1 from the protocol caption.
            count = tf.gather(counts, index)
            offset = 1 + tf.cast(u[1] * tf.cast(tf.maximum(count - 1, 1), tf.float32), tf.int32)
            other = tf.where(count > 1, (chosen + tf.minimum(offset, count - 1)) % count, chosen)
            rows["text_aug"] = tf.gather_nd(captions, tf.stack([index, other], axis=1))
        if clean is not None:
            rows["clean"] = tf.gather(clean, index)
        if labels is not None:
            rows["label"] = tf.gather(labels, index)
        return rows

    batches = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((batches, randoms)).map(gather).prefetch(2)
