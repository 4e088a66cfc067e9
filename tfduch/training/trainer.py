"""Build a hashing model from a config and train it with ``keras.Model.fit``.

This is the one trainer of the project: a method plugs in by registering a model class in
:data:`METHODS`; its ``train_step`` holds whatever makes the method different.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfduch.config import Config
from tfduch.errors import ConfigError
from tfduch.models.base import CrossModalHasher
from tfduch.models.duch import DUCH
from tfduch.training.callbacks import CodeTargetUpdate, PeriodicEvaluation, ResumableCheckpoint, StepDecay
from tfduch.training.data import TrainingFeatures, make_dataset
from tfduch.training.distribute import discard_worker_dir, make_strategy, worker_dir

ModelFactory = Callable[[Config, "ModelShape"], CrossModalHasher]


@dataclass(frozen=True)
class ModelShape:
    """What a model needs to know about its data to be built: feature sizes and training-set size."""

    image_dim: int
    text_dim: int
    num_train: int

    @classmethod
    def of(cls, features: TrainingFeatures) -> ModelShape:
        return cls(int(features.image.shape[1]), int(features.captions.shape[-1]), len(features))


def _build_duch(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    return DUCH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits, num_train=shape.num_train,
                hidden_dim=cfg.model.hidden_dim, loss=cfg.loss, seed=cfg.train.seed)


METHODS: dict[str, ModelFactory] = {"duch": _build_duch}


def register_method(name: str, factory: ModelFactory) -> None:
    """Make a new method trainable by name (``model.method`` in a config)."""
    METHODS[name] = factory


def build_model(cfg: Config, data: TrainingFeatures | ModelShape) -> CrossModalHasher:
    """Instantiate, build and compile the configured method with the reference optimizers.

    Everything (heads, both optimizers, code targets, metrics) is created under ``train.strategy``'s scope, so
    ``fit`` distributes it; a method whose ``train_step`` is not known to be correct on several replicas is refused.
    """
    import tfduch.methods  # noqa: F401  (registers cach, djsrh, jdsh; lazy to avoid an import cycle)
    factory = METHODS.get(cfg.model.method)
    if factory is None:
        raise ValueError(f"unknown method {cfg.model.method!r}; known: {', '.join(sorted(METHODS))}")
    strategy = make_strategy(cfg.train.strategy)
    with strategy.scope():
        model = _build_compiled(cfg, data, factory)
    if strategy.num_replicas_in_sync > 1 and not model.distributable:
        raise ConfigError(f"method {cfg.model.method!r} does not support training on "
                          f"{strategy.num_replicas_in_sync} replicas (train.strategy={cfg.train.strategy}); "
                          "use train.strategy=default")
    return model


def _build_compiled(cfg: Config, data: TrainingFeatures | ModelShape, factory: ModelFactory) -> CrossModalHasher:
    keras.utils.set_random_seed(cfg.train.seed)
    model = factory(cfg, data if isinstance(data, ModelShape) else ModelShape.of(data))
    t = cfg.train
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=t.lr),
        discriminator_optimizer=keras.optimizers.Adam(learning_rate=t.disc_lr, beta_1=t.disc_beta_1,
                                                      beta_2=t.disc_beta_2),
        weight_decay=t.weight_decay,
        discriminator_weight_decay=t.disc_weight_decay,
    )
    # Build every variable now so checkpoints restore into existing variables.
    model({"image": tf.zeros((2, model.image_dim)), "text": tf.zeros((2, model.text_dim))})
    model.discriminator(tf.zeros((2, model.bits)))
    model.optimizer.build(model.hashing_variables)
    if getattr(model, "discriminator_optimizer", None) is not None:
        model.discriminator_optimizer.build(model.discriminator.trainable_variables)
    return model


def train(cfg: Config, features: TrainingFeatures, output_dir: str | Path,
          evaluate: Callable[[], dict[str, float]] | None = None,
          extra_callbacks: list[keras.callbacks.Callback] | None = None,
          model: CrossModalHasher | None = None) -> tuple[CrossModalHasher, dict[str, Any]]:
    """Train (or resume training of) a model; returns it and a summary with the loss history and time.

    Under a multi-worker strategy every worker calls this; only the chief's checkpoints and logs land in
    ``output_dir`` (the others write to temporary folders, deleted at the end). Resuming reads ``output_dir``'s
    checkpoints on every worker, so it needs that folder on storage all workers see.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or build_model(cfg, features)
    dataset = make_dataset(features, cfg.train.batch_size, seed=cfg.train.seed)
    callbacks: list[keras.callbacks.Callback] = [
        CodeTargetUpdate(),
        StepDecay(cfg.train.lr, cfg.train.lr_decay_every, cfg.train.lr_decay_factor, cfg.train.min_lr),
    ]
    initial_epoch = 0
    strategy = model.distribute_strategy
    scratch: list[Path] = []  # non-chief workers' temporary folders
    ckpt: ResumableCheckpoint | None = None
    if cfg.train.checkpoint:
        ckpt_dir = worker_dir(out / "checkpoints", strategy)
        scratch.append(ckpt_dir)
        try:
            ckpt = ResumableCheckpoint(ckpt_dir, model, every=cfg.train.checkpoint_every,
                                       shadow=_shadow(cfg, model, features))
        except ValueError as exc:  # a model built some other way than build_model(cfg, ...)
            warnings.warn(f"checkpoints are written synchronously: {exc}", stacklevel=2)
            ckpt = ResumableCheckpoint(ckpt_dir, model, every=cfg.train.checkpoint_every)
        initial_epoch = ckpt.restore(out / "checkpoints")
        callbacks.append(ckpt)
        if initial_epoch:
            print(f"Resuming from {out / 'checkpoints'} (epoch {initial_epoch}/{cfg.train.epochs})")
    if evaluate is not None and cfg.train.eval_every > 0:
        callbacks.append(PeriodicEvaluation(cfg.train.eval_every, evaluate))
    if cfg.train.tensorboard:
        scratch.append(worker_dir(out / "tensorboard", strategy))
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(scratch[-1]), write_graph=False))
    callbacks.extend(extra_callbacks or [])
    verbose: Any = cfg.train.verbose
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    start = time.perf_counter()
    history: dict[str, list[float]] = {}
    try:
        if initial_epoch < cfg.train.epochs:
            result = model.fit(dataset, epochs=cfg.train.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                               verbose=int(verbose))
            history = {k: [float(x) for x in v] for k, v in result.history.items()}
    finally:
        if ckpt is not None:
            ckpt.wait(raise_errors=False)  # an interrupted fit still finishes the checkpoint being written
        for path in scratch:
            discard_worker_dir(path, strategy)
    elapsed = time.perf_counter() - start
    return model, {"history": history, "train_seconds": elapsed, "initial_epoch": initial_epoch,
                   "epochs": cfg.train.epochs}


def _shadow(cfg: Config, model: CrossModalHasher, features: TrainingFeatures) -> CrossModalHasher | None:
    """A second model, built like ``model``, that background checkpoint writes copy from (None: save in sync).

    Distributed runs save synchronously: every worker must take part in writing mirrored variables.
    """
    if not cfg.train.checkpoint_background or model.distribute_strategy.num_replicas_in_sync > 1 \
            or getattr(model.distribute_strategy, "cluster_resolver", None) is not None:
        return None
    return build_model(cfg, features)
