"""Binary code targets B for the quantization loss.

During an epoch the hashing network's continuous codes for every training item and view are
recorded; at the end of the epoch B is recomputed from them (sign of the mean of the views). Keeping
this state in non-trainable weights makes it part of every checkpoint, so a resumed run continues
with the same targets.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfduch.losses.quantization import binary_targets


class CodeTargets(keras.layers.Layer):
    """Per-item binary targets B (``[N, K]``) and the last recorded codes of each view."""

    def __init__(self, num_items: int, bits: int, views: tuple[str, ...] = ("image", "image_aug", "text", "text_aug"),
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.bits = int(bits)
        self.views = tuple(views)
        self.seed = int(seed)
        rng = keras.random.SeedGenerator(seed)
        init = keras.ops.sign(keras.random.normal((self.num_items, self.bits), seed=rng))
        init = keras.ops.where(init == 0, 1.0, init)
        # Before the first refresh B is random, as in the reference implementation.
        self.targets = self.add_weight(shape=(self.num_items, self.bits), initializer=lambda *a, **k: init,
                                       trainable=False, name="targets")
        # One attribute per view (not a dict attribute): TensorFlow checkpoints track plain attributes
        # reliably, so a resumed run gets the recorded codes back too.
        for v in self.views:
            setattr(self, f"recorded_{v}",
                    self.add_weight(shape=(self.num_items, self.bits), initializer="zeros", trainable=False, name=v))

    @property
    def recorded(self) -> dict[str, keras.Variable]:
        return {v: getattr(self, f"recorded_{v}") for v in self.views}

    def lookup(self, index: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.targets, index)

    def record(self, index: tf.Tensor, codes: dict[str, tf.Tensor]) -> None:
        """Store this batch's continuous codes (no gradient) at their item positions."""
        idx = tf.expand_dims(tf.cast(index, tf.int32), 1)
        for view, h in codes.items():
            var = self.recorded[view]
            var.assign(tf.tensor_scatter_nd_update(var.value, idx, tf.stop_gradient(h)))

    def refresh(self) -> None:
        """B ← sign(mean(mean of image views, mean of text views)); called once per epoch."""
        image_views = [self.recorded[v].value for v in self.views if v.startswith("image")]
        text_views = [self.recorded[v].value for v in self.views if v.startswith("text")]
        self.targets.assign(binary_targets(image_views, text_views))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_items": self.num_items, "bits": self.bits,
                "views": list(self.views), "seed": self.seed}


class CodeTargetUpdate(keras.callbacks.Callback):
    """Refresh the quantization targets B from the codes recorded during the epoch (methods with CodeTargets)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.model.code_targets.refresh()
