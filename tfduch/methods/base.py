"""What a method declares about itself, and the helpers its declaration uses.

A learned method (:class:`LearnedMethod`) says how to build its model from a config, which optimizers
and callbacks its training needs, whether it learns from a clean subset of trusted pairs, and which
published reference rows and ablation variants it has. A classical method (:class:`ClassicalMethod`)
is fitted in closed form. The trainer, the pipeline and ``reproduce`` read only these declarations,
through :mod:`tfduch.methods.registry`; none of them knows a method by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import keras

from tfduch.config import Config
from tfduch.errors import ConfigError
from tfduch.models.base import CrossModalHasher
from tfduch.models.targets import CodeTargetUpdate

__all__ = ["ClassicalMethod", "LearnedMethod", "ModelShape", "Variant", "duch_optimizers", "method_params",
           "single_optimizer", "steps_per_epoch", "target_refresh"]

P = TypeVar("P")
#: Published mAP@20 rows of a method: direction ("i2t", "t2i") → code length → value.
Published = Mapping[str, Mapping[int, float]]


@dataclass(frozen=True)
class ModelShape:
    """What a model needs to know about its data to be built: feature sizes and training-set size."""

    image_dim: int
    text_dim: int
    num_train: int

    @classmethod
    def of(cls, features: Any) -> ModelShape:
        """From training features (``image [N, D]``, ``captions [..., D_txt]``, ``len()`` = N)."""
        return cls(int(features.image.shape[1]), int(features.captions.shape[-1]), len(features))


@dataclass(frozen=True)
class Variant:
    """An ablation / alternative of a method: config overrides applied on top of the method's config.

    ``config`` names another file of the config folder (without ``.yaml``) to start from instead of
    ``<method>.yaml``, for a variant that is a shipped config (``duch-paper`` = ``configs/duch_paper.yaml``):
    the row then trains exactly what that file says, without its settings copied here.
    """

    overrides: tuple[str, ...] = ()
    display: str | None = None  # default: "<METHOD> − <what the name switches off>"
    config: str | None = None


@dataclass(frozen=True)
class LearnedMethod:
    """A method trained by the one trainer (``keras.Model.fit`` on a :class:`CrossModalHasher`)."""

    name: str
    display: str
    build: Callable[[Config, ModelShape], CrossModalHasher]
    # keyword arguments of model.compile(): the optimizers the method trains with (and their weight decay)
    optimizers: Callable[[Config, CrossModalHasher], dict[str, Any]]
    # callbacks the method's training needs besides the trainer's own (LR schedule, checkpoints, logs)
    callbacks: Callable[[Config], list[keras.callbacks.Callback]] = lambda cfg: []
    needs_clean_subset: bool = False  # learns from trusted pairs: the pipeline draws a clean subset for it
    published: Published = field(default_factory=dict)
    variants: Mapping[str, Variant] = field(default_factory=dict)


class Hasher(Protocol):
    def encode_image(self, x: Any) -> Any: ...

    def encode_text(self, x: Any) -> Any: ...


@dataclass(frozen=True)
class ClassicalMethod:
    """A baseline fitted in closed form on the training features (no Keras training)."""

    name: str
    display: str
    fit: Callable[[int, int, Any, Any], Hasher]  # (bits, seed, image features, text features) → fitted hasher
    published: Published = field(default_factory=dict)


def method_params(cls: type[P], cfg: Config, **fixed: Any) -> P:
    """``cls(**cfg.model.params, **fixed)`` with errors that name the config key at fault."""
    raw = dict(cfg.model.params or {})
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"model.params for method {cfg.model.method!r}: unknown key(s) {unknown}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        return cls(**raw, **fixed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params for method {cfg.model.method!r}: {exc}") from exc


def steps_per_epoch(cfg: Config, shape: ModelShape) -> int:
    return max(1, math.ceil(shape.num_train / cfg.train.batch_size))


def duch_optimizers(cfg: Config, model: CrossModalHasher) -> dict[str, Any]:
    """DUCH's reference optimizers: Adam for the heads, Adam(β=0.5, 0.9) for the discriminator, coupled L2."""
    t = cfg.train
    return {"optimizer": keras.optimizers.Adam(learning_rate=t.lr),
            "discriminator_optimizer": keras.optimizers.Adam(learning_rate=t.disc_lr, beta_1=t.disc_beta_1,
                                                             beta_2=t.disc_beta_2),
            "weight_decay": t.weight_decay, "discriminator_weight_decay": t.disc_weight_decay}


def single_optimizer(cfg: Config, model: CrossModalHasher) -> dict[str, Any]:
    """One optimizer for the heads: the reference SGD with momentum, or Adam (``model.params.optimizer``)."""
    params = model.params
    if params.optimizer == "sgd":
        optimizer: keras.optimizers.Optimizer = keras.optimizers.SGD(learning_rate=cfg.train.lr,
                                                                     momentum=params.momentum)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=cfg.train.lr)
    return {"optimizer": optimizer, "weight_decay": cfg.train.weight_decay}


def target_refresh(cfg: Config) -> list[keras.callbacks.Callback]:
    """Methods with binary code targets refresh them at the end of every epoch."""
    return [CodeTargetUpdate()]
