"""DUCH (Mikriukov et al., 2022): contrastive + adversarial + quantization + bit balance; the default method."""

from __future__ import annotations

from tfduch.config import Config
from tfduch.methods.base import LearnedMethod, ModelShape, Variant, duch_optimizers, target_refresh
from tfduch.models.base import CrossModalHasher
from tfduch.models.duch import DUCH


def build(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    return DUCH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits, num_train=shape.num_train,
                hidden_dim=cfg.model.hidden_dim, loss=cfg.loss, seed=cfg.train.seed)


METHOD = LearnedMethod(
    name="duch", display="DUCH", build=build, optimizers=duch_optimizers, callbacks=target_refresh,
    # Published UCM mAP@20 (DUCH paper, Mikriukov et al. 2022), by direction and code length.
    published={"i2t": {16: 0.760, 32: 0.794, 64: 0.844, 128: 0.870},
               "t2i": {16: 0.799, 32: 0.851, 64: 0.916, 128: 0.927}},
    variants={
        # The paper's objective and schedule: adversarial term on, Adam 1e-4 x0.8 / 50.
        "duch-paper": Variant(config="duch_paper", display="DUCH (paper objective)"),
    },
)
