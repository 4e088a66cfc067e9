"""DJSRH (Su et al., ICCV 2019): reconstruct a joint-modal similarity matrix; one optimizer, no discriminator."""

from __future__ import annotations

from collections.abc import Callable

from tfduch.config import Config
from tfduch.methods.base import LearnedMethod, ModelShape, method_params, single_optimizer, steps_per_epoch
from tfduch.models.base import CrossModalHasher
from tfduch.models.djsrh import DJSRH, DJSRHParams


def similarity_factory(model_cls: type[DJSRH], params_cls: type) -> Callable[[Config, ModelShape], CrossModalHasher]:
    """The factory of a DJSRH-family model: typed params from ``model.params``, the epoch length for its code scale."""

    def build(cfg: Config, shape: ModelShape) -> CrossModalHasher:
        params = method_params(params_cls, cfg, steps_per_epoch=steps_per_epoch(cfg, shape))
        return model_cls(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits,
                         hidden_dim=cfg.model.hidden_dim, params=params)

    return build


METHOD = LearnedMethod(
    name="djsrh", display="DJSRH", build=similarity_factory(DJSRH, DJSRHParams), optimizers=single_optimizer,
    # Published UCM mAP@20 (as reported in the DUCH paper).
    published={"i2t": {16: 0.686, 32: 0.711, 64: 0.735, 128: 0.754},
               "t2i": {16: 0.738, 32: 0.755, 64: 0.776, 128: 0.800}},
)
