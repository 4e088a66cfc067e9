"""Callbacks that carry the parts of DUCH training that happen between steps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

# Method-specific callbacks live with their models; re-exported for existing callers.
from tfduch.models.phases import PhaseSwitch  # noqa: F401
from tfduch.models.targets import CodeTargetUpdate  # noqa: F401


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

    With ``shadow`` (a second model built exactly like ``model``), a save only copies every checkpointed
    variable into the shadow, in memory, and a thread writes the shadow's checkpoint while training goes on;
    the next save (and the end of ``fit``) waits for that write. Why: the copy blocks training for a few ms
    where a synchronous save of the 4096-wide heads and their Adam state (~100 MB at 64 bits) blocks it for
    tens to hundreds of ms. It only pays where the CPUs have room for the write: on a 2-core machine the
    write competes with training and whole runs were no faster (docs/duch.md). (TensorFlow's own async
    checkpointing fails on Keras 3 variables from the second save on.)
    """

    def __init__(self, directory: str | Path, model: keras.Model, max_to_keep: int = 2, every: int = 1,
                 shadow: keras.Model | None = None):
        super().__init__()
        if every < 1:
            raise ValueError(f"checkpoint every {every} epochs: must be at least 1")
        self.every = int(every)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(**_checkpointed(model, self.epoch))
        self._pairs: list[tuple[tf.Variable, tf.Variable]] = []
        written = self.checkpoint
        if shadow is not None:
            written = tf.train.Checkpoint(**_checkpointed(shadow, tf.Variable(0, dtype=tf.int64, trainable=False,
                                                                              name="epoch")))
            live, copy = _variables(self.checkpoint), _variables(written)
            mismatch = len(live) != len(copy) or any(
                a.shape != b.shape or a.dtype != b.dtype for a, b in zip(live, copy, strict=False))
            if mismatch:
                raise ValueError(f"the shadow model is not built like the model: {len(copy)} checkpointed "
                                 f"variables against {len(live)}, or their shapes differ")
            self._pairs = list(zip(live, copy, strict=True))
        self.manager = tf.train.CheckpointManager(written, str(directory), max_to_keep=max_to_keep)
        self._writer: threading.Thread | None = None
        self._error: tuple[int, BaseException] | None = None

    @property
    def background(self) -> bool:
        """Whether saves are written by a background thread from a shadow copy."""
        return bool(self._pairs)

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
            self.save(epoch + 1)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.wait()

    def save(self, number: int) -> None:
        """Save the current state as checkpoint ``number`` (in the background when there is a shadow)."""
        if not self.background:
            self.manager.save(checkpoint_number=number)
            return
        self.wait()
        for live, copy in self._pairs:
            copy.assign(live)
        self._writer = threading.Thread(target=self._write, args=(number,), name=f"checkpoint-{number}")
        self._writer.start()

    def wait(self, raise_errors: bool = True) -> None:
        """Block until a background write has finished; re-raise its failure (``raise_errors``)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None and raise_errors:
            number, error = self._error
            self._error = None
            raise RuntimeError(f"writing checkpoint {number} to {self.manager.directory} failed: {error}") from error

    def _write(self, number: int) -> None:
        try:
            self.manager.save(checkpoint_number=number)
        except BaseException as error:  # noqa: BLE001 (re-raised in the training thread by wait())
            self._error = (number, error)


def _checkpointed(model: keras.Model, epoch: tf.Variable) -> dict[str, object]:
    """What a checkpoint holds: the model (heads, targets, ...), its optimizers and the epoch counter."""
    objects: dict[str, object] = {"model": model, "epoch": epoch}
    if model.optimizer is not None:
        objects["optimizer"] = model.optimizer
    if getattr(model, "discriminator_optimizer", None) is not None:
        objects["discriminator_optimizer"] = model.discriminator_optimizer
    return objects


def _variables(checkpoint: tf.train.Checkpoint) -> list:
    """Every variable a checkpoint saves, in the checkpoint's own (deterministic) traversal order."""
    return [obj for obj in tf.train.TrackableView(checkpoint).descendants()
            if isinstance(obj, tf.Variable | keras.Variable)]


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs, add retrieval metrics (e.g. mAP@20 per direction) to the epoch logs."""

    def __init__(self, every: int, evaluate: Callable[[], dict[str, float]]):
        super().__init__()
        self.every, self.evaluate = every, evaluate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.every > 0 and (epoch + 1) % self.every == 0 and logs is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate().items()})
