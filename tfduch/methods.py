"""Register the methods beyond DUCH (CHNR, CACH, DJSRH, JDSH) with the trainer.

Importing this module is enough: :func:`tfduch.training.trainer.build_model` imports it lazily, so
``model.method: cach`` (or ``djsrh``, ``jdsh``) works in any config. Each factory turns the free-form
``model.params`` mapping into the method's typed parameter dataclass, so a misspelt key fails at
build time with a message that names it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from tfduch.config import Config
from tfduch.errors import ConfigError
from tfduch.models.base import CrossModalHasher
from tfduch.models.cach import CACH, CACHParams
from tfduch.models.chnr import build_chnr
from tfduch.models.djsrh import DJSRH, DJSRHParams
from tfduch.models.jdsh import JDSH, JDSHParams
from tfduch.training.trainer import METHODS, ModelShape, register_method

P = TypeVar("P")


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


def build_cach(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    return CACH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits, num_train=shape.num_train,
                hidden_dim=cfg.model.hidden_dim, loss=cfg.loss, params=method_params(CACHParams, cfg),
                seed=cfg.train.seed)


def build_djsrh(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    params = method_params(DJSRHParams, cfg, steps_per_epoch=steps_per_epoch(cfg, shape))
    return DJSRH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits,
                 hidden_dim=cfg.model.hidden_dim, params=params)


def build_jdsh(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    params = method_params(JDSHParams, cfg, steps_per_epoch=steps_per_epoch(cfg, shape))
    return JDSH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits,
                hidden_dim=cfg.model.hidden_dim, params=params)


FACTORIES = {"chnr": build_chnr, "cach": build_cach, "djsrh": build_djsrh, "jdsh": build_jdsh}


def register_all() -> None:
    """Add the factories to the trainer's registry (idempotent; never replaces a method already there)."""
    for name, factory in FACTORIES.items():
        if name not in METHODS:
            register_method(name, factory)


register_all()
