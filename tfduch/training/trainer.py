"""Build a hashing model from a config and train it with ``keras.Model.fit``.

This is the one trainer of the project. It knows no method by name: the method's declaration in
:mod:`tfduch.methods` (looked up in its registry) says how to build the model, which optimizers it
compiles with and which callbacks its training needs; the model's ``train_step`` holds whatever else
makes the method different.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from tfduch.config import Config
from tfduch.errors import ConfigError
from tfduch.methods import LearnedMethod, ModelShape, learned_method
from tfduch.models.base import CrossModalHasher
from tfduch.training.callbacks import PeriodicEvaluation, ResumableCheckpoint, StepDecay
from tfduch.training.data import TrainingFeatures, make_dataset
from tfduch.training.distribute import discard_worker_dir, make_strategy, worker_dir


def build_model(cfg: Config, data: TrainingFeatures | ModelShape) -> CrossModalHasher:
    """Instantiate, build and compile the configured method with the reference optimizers.

    Everything (heads, both optimizers, code targets, metrics) is created under ``train.strategy``'s scope, so
    ``fit`` distributes it; a method whose ``train_step`` is not known to be correct on several replicas is refused.
    """
    method = learned_method(cfg.model.method)
    strategy = make_strategy(cfg.train.strategy)
    with strategy.scope():
        model = _build_compiled(cfg, data, method)
    if strategy.num_replicas_in_sync > 1 and not model.distributable:
        raise ConfigError(f"method {cfg.model.method!r} does not support training on "
                          f"{strategy.num_replicas_in_sync} replicas (train.strategy={cfg.train.strategy}); "
                          "use train.strategy=default")
    return model


def _build_compiled(cfg: Config, data: TrainingFeatures | ModelShape, method: LearnedMethod) -> CrossModalHasher:
    keras.utils.set_random_seed(cfg.train.seed)
    model = method.build(cfg, data if isinstance(data, ModelShape) else ModelShape.of(data))
    model.compile(**method.optimizers(cfg, model))
    model.build_state()  # every variable now, so checkpoints restore into existing variables
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
        *learned_method(cfg.model.method).callbacks(cfg),
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
