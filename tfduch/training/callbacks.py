"""Callbacks that carry the parts of DUCH training that happen between steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf


class CodeTargetUpdate(keras.callbacks.Callback):
    """Refresh the quantization targets B from the codes recorded during the epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.model.code_targets.refresh()


class StepDecay(keras.callbacks.Callback):
    """Multiply the hashing learning rate by ``factor`` after epoch 0, every, 2·every, ... (reference schedule)."""

    def __init__(self, initial_lr: float, every: int = 50, factor: float = 0.8, min_lr: float = 1e-6):
        super().__init__()
        self.initial_lr, self.every, self.factor, self.min_lr = initial_lr, every, factor, min_lr

    def lr_at(self, epoch: int) -> float:
        decays = (epoch + self.every - 1) // self.every if self.every > 0 else 0
        return max(self.initial_lr * self.factor**decays, self.min_lr)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate.assign(self.lr_at(epoch))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class ResumableCheckpoint(keras.callbacks.Callback):
    """Checkpoint model, both optimizers, targets and the epoch counter every ``every`` epochs and after the last.

    ``restore()`` before ``fit`` returns the epoch to resume from. TensorFlow's checkpoint manager
    writes the data files first and then atomically replaces the index, so a crash mid-save leaves
    the previous checkpoint usable.
    """

    def __init__(self, directory: str | Path, model: keras.Model, max_to_keep: int = 2, every: int = 1):
        super().__init__()
        if every < 1:
            raise ValueError(f"checkpoint every {every} epochs: must be at least 1")
        self.every = int(every)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects = {"model": model, "epoch": self.epoch}
        if model.optimizer is not None:
            objects["optimizer"] = model.optimizer
        if getattr(model, "discriminator_optimizer", None) is not None:
            objects["discriminator_optimizer"] = model.discriminator_optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=max_to_keep)

    def restore(self, directory: str | Path | None = None) -> int:
        """Restore the latest checkpoint of ``directory`` (default: this callback's own); returns its epoch.

        Why another folder: a non-chief worker saves into a scratch folder but resumes from the chief's.
        """
        latest = self.manager.latest_checkpoint if directory is None else tf.train.latest_checkpoint(str(directory))
        if latest is None:
            return 0
        self.checkpoint.restore(latest).expect_partial()
        return int(self.epoch.numpy())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every == 0 or epoch + 1 == last:
            self.epoch.assign(epoch + 1)
            self.manager.save(checkpoint_number=epoch + 1)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs, add retrieval metrics (e.g. mAP@20 per direction) to the epoch logs."""

    def __init__(self, every: int, evaluate: Callable[[], dict[str, float]]):
        super().__init__()
        self.every, self.evaluate = every, evaluate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.every > 0 and (epoch + 1) % self.every == 0 and logs is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate().items()})
