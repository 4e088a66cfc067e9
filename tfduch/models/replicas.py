"""Inside a train_step (replica context): what keeps a distributed step equal to single-worker training.

Each replica runs the hashing heads on its share of the global batch; :func:`gather_replicas`
concatenates the codes of all replicas so every loss term is the single-worker value, and
:func:`replica_scale` (1/R) turns the optimizers' all-reduce SUM back into the single-worker gradient.
The strategy itself is chosen in :mod:`tfduch.training.distribute` (see docs/scale.md).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["apply_gradients", "gather_replicas", "num_replicas", "replica_scale", "step_logs"]


def num_replicas() -> int:
    """Replicas taking part in the current step (1 outside any strategy)."""
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else tf.distribute.get_strategy().num_replicas_in_sync


def gather_replicas(values: Any) -> Any:
    """Concatenate a (nested) batch of tensors of all replicas along axis 0; identity with one replica.

    Differentiable: the gradient reaching each replica's own rows is the sum of every replica's gradient on
    them (``ReplicaContext.all_gather``), so a loss on gathered codes trains the heads of every replica.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    # Pin the inputs to this replica's device: with one device per worker, MultiWorkerMirroredStrategy hands
    # all_gather plain tensors, and one without a device is rejected ("destinations can not be empty").
    local_devices = tf.distribute.get_strategy().extended.worker_devices
    if len(local_devices) == 1:
        with tf.device(local_devices[0]):
            values = tf.nest.map_structure(tf.identity, values)
    return ctx.all_gather(values, axis=0)


def step_logs(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A train_step's scalar logs, as shape ``[1]`` under multi-worker training.

    Why: Keras 3.15 averages multi-worker step outputs with ``strategy.reduce("MEAN", v, axis=0)``, which has no
    axis 0 to reduce on a scalar; ``[1]`` values come out of it as the scalar mean.
    """
    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}


def replica_scale(grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """Gradients of a loss that every replica computes in full, divided by R so their all-reduce SUM is it once."""
    r = num_replicas()
    if r == 1:
        return grads
    return [None if g is None else g / float(r) for g in grads]


def apply_gradients(optimizer: keras.optimizers.Optimizer, grads: list[tf.Tensor], variables: list[keras.Variable],
                    decay: float) -> None:
    """Add coupled L2 and apply; each replica's gradient of the (replicated) global loss counts 1/R of the sum."""
    if decay:
        grads = [g + decay * tf.convert_to_tensor(v) for g, v in zip(grads, variables, strict=True)]
    optimizer.apply(replica_scale(grads), variables)
