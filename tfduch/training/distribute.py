"""The one place that chooses and describes the ``tf.distribute`` strategy a training run uses.

``train.strategy`` (``tfduch train --strategy``) picks it:

* ``default`` — no distribution (one device), the numerics every other test checks;
* ``mirrored`` — ``MirroredStrategy``: every GPU of this host (one CPU replica without GPUs);
* ``multiworker`` — ``MultiWorkerMirroredStrategy`` across the machines listed in ``TF_CONFIG``.

How a step stays equal to single-worker training (see ``docs/scale.md``): each replica runs the hashing
heads on its share of the global batch, then :func:`gather_replicas` concatenates the codes (and the
batch) of all replicas, so every loss term — NT-Xent with the negatives of the *global* batch, the
discriminator and its gradient penalty, quantization, bit balance — is the single-worker value. Every
replica computes that same global loss, so :func:`replica_scale` (1/R) turns the optimizers' all-reduce
SUM of per-replica gradients back into the single-worker gradient.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tensorflow as tf

from tfduch.config import STRATEGIES
from tfduch.errors import ConfigError

# The in-step helpers live with the models that call them; re-exported here for existing callers.
from tfduch.models.replicas import gather_replicas, num_replicas, replica_scale, step_logs  # noqa: F401

_created: dict[str, tf.distribute.Strategy] = {}


def parse_tf_config(raw: str | None = None) -> dict[str, Any]:
    """Validate ``TF_CONFIG`` (``cluster.worker`` host:port list + ``task`` {type, index}) and return it.

    Why here: a missing or malformed TF_CONFIG otherwise surfaces as a hang or an opaque gRPC error.
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        raise ConfigError(f"train.strategy=multiworker needs the TF_CONFIG environment variable; {example}")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}); {example}") from exc
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(f"TF_CONFIG needs a 'cluster' mapping of job name to host:port list; {example}")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ConfigError(f"TF_CONFIG cluster.{job} must be a non-empty list of 'host:port' strings, got {hosts!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f"TF_CONFIG task.type must be one of {sorted(cluster)}, got {task!r}; {example}")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(f"TF_CONFIG task.index must be 0..{len(cluster[task['type']]) - 1}, got {index!r}")
    return spec


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The strategy for ``train.strategy`` (created once per process and reused).

    Create it before any other TensorFlow op when it is ``multiworker``: the collective setup must come first.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown train.strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    if name not in _created:
        if name == "default":
            _created[name] = tf.distribute.get_strategy()
        elif name == "mirrored":
            _created[name] = tf.distribute.MirroredStrategy()
        else:
            parse_tf_config()
            _created[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _created[name]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: a 'chief' task, else worker 0 (always true off multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_dir(path: str | Path, strategy: tf.distribute.Strategy) -> Path:
    """``path`` on the chief; a fresh temporary folder on other workers (remove it with :func:`discard_worker_dir`).

    Why: every worker must take part in saving (checkpoints of mirrored variables), but only the chief's copy is
    kept — the standard Keras multi-worker pattern.
    """
    if is_chief(strategy):
        return Path(path)
    return Path(tempfile.mkdtemp(prefix=f"tfduch-worker-{Path(path).name}-"))


def discard_worker_dir(path: Path, strategy: tf.distribute.Strategy) -> None:
    """Delete a non-chief worker's temporary folder (no-op on the chief)."""
    if not is_chief(strategy):
        shutil.rmtree(path, ignore_errors=True)
