"""CHNR (Mikriukov et al., ICIP 2022): DUCH plus a noise detector trained on a clean subset of trusted pairs."""

from __future__ import annotations

from tfduch.config import Config
from tfduch.methods.base import LearnedMethod, ModelShape, Variant, duch_optimizers
from tfduch.models.chnr import CHNR
from tfduch.models.phases import PhaseSwitch
from tfduch.models.targets import CodeTargetUpdate


def build_chnr(cfg: Config, shape: ModelShape) -> CHNR:
    """Trainer factory (``model.method: chnr``)."""
    return CHNR(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits, num_train=shape.num_train,
                hidden_dim=cfg.model.hidden_dim, loss=cfg.loss, chnr=cfg.noise.chnr, seed=cfg.train.seed)


def callbacks(cfg: Config) -> list:
    """Code-target refresh, and the meta-learning → weighted phase switch at ``noise.chnr.switch_epoch``."""
    return [CodeTargetUpdate(), PhaseSwitch(cfg.noise.chnr.switch_epoch)]


METHOD = LearnedMethod(
    name="chnr", display="CHNR", build=build_chnr, optimizers=duch_optimizers, callbacks=callbacks,
    needs_clean_subset=True,
    variants={
        # CHNR's detector weights on DUCH's objective
        "chnr-duch": Variant(config="chnr_duch", display="CHNR (DUCH objective)"),
    },
)
