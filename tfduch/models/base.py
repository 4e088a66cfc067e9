"""What every cross-modal hashing method shares: one hashing head per modality.

A method (DUCH, CHNR, CACH, ...) subclasses :class:`CrossModalHasher` and adds its own parts and
``train_step``; the trainer, evaluation and export only rely on the methods defined here.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfduch.codes import sign
from tfduch.models.heads import build_hash_head


class CrossModalHasher(keras.Model):
    """Image head + text head mapping frozen encoder features to K continuous codes in (−1, 1)."""

    # Whether train_step is correct with more than one replica (it gathers codes across them); the trainer
    # refuses multi-replica training of a method that does not say so.
    distributable = False

    def __init__(self, image_dim: int, text_dim: int, bits: int, hidden_dim: int = 4096, **kwargs: Any):
        super().__init__(**kwargs)
        self.image_dim = int(image_dim)
        self.text_dim = int(text_dim)
        self.bits = int(bits)
        self.hidden_dim = int(hidden_dim)
        self.image_head = build_hash_head(self.image_dim, self.bits, self.hidden_dim, name="image_head")
        self.text_head = build_hash_head(self.text_dim, self.bits, self.hidden_dim, name="text_head")
        self.trackers: dict[str, keras.metrics.Metric] = {}  # each method's logged loss terms, by name

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    @property
    def hashing_variables(self) -> list[keras.Variable]:
        """What the hashing optimizer updates (a method with more trainable parts extends it)."""
        return self.image_head.trainable_variables + self.text_head.trainable_variables

    def build_state(self) -> None:
        """Create every variable (heads, optimizer slots) now, so checkpoints restore into existing variables."""
        self({"image": tf.zeros((2, self.image_dim)), "text": tf.zeros((2, self.text_dim))})
        self.optimizer.build(self.hashing_variables)

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        out = {}
        if "image" in inputs:
            out["image"] = self.image_head(inputs["image"], training=training)
        if "text" in inputs:
            out["text"] = self.text_head(inputs["text"], training=training)
        return out

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Keras' pre-``fit`` build under a strategy, from the dataset's element spec instead of its first batch.

        Why: Keras 3.15 draws one batch and then restarts the iterator, so a dataset reshuffled every iteration (ours)
        starts epoch 0 on its second order — distributed training would see other batches than single-worker
        training; and its ``strategy.reduce`` of that batch fails on dict batches under a multi-worker strategy.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        adapter = getattr(iterator, "data_adapter", None)
        if strategy is None or adapter is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with strategy.scope():
            self._symbolic_build(data_batch=adapter.get_tf_dataset().element_spec)

    def encode(self, features: np.ndarray, modality: str, batch_size: int = 1024) -> np.ndarray:
        """Binary codes (int8 ±1, ``[N, K]``) for a feature matrix; sign(0) counts as +1."""
        head = {"image": self.image_head, "text": self.text_head}.get(modality)
        if head is None:
            raise ValueError(f"unknown modality {modality!r}: use 'image' or 'text'")
        features = np.asarray(features, dtype=np.float32)
        chunks = [
            np.asarray(_infer(head, tf.constant(features[i : i + batch_size])))
            for i in range(0, len(features), batch_size)
        ]
        h = np.concatenate(chunks) if chunks else np.zeros((0, self.bits), np.float32)
        return sign(h)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "bits": self.bits,
            "hidden_dim": self.hidden_dim,
        }


@tf.function(reduce_retracing=True)
def _infer(head: keras.Model, x: tf.Tensor) -> tf.Tensor:
    return head(x, training=False)
