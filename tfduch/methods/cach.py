"""CACH (Liu et al., JSTARS 2025): DUCH's terms + multiscale similarity constraints + a cross-autoencoder."""

from __future__ import annotations

from tfduch.config import Config
from tfduch.methods.base import LearnedMethod, ModelShape, Variant, duch_optimizers, method_params, target_refresh
from tfduch.models.base import CrossModalHasher
from tfduch.models.cach import CACH, CACHParams


def build(cfg: Config, shape: ModelShape) -> CrossModalHasher:
    return CACH(image_dim=shape.image_dim, text_dim=shape.text_dim, bits=cfg.model.bits, num_train=shape.num_train,
                hidden_dim=cfg.model.hidden_dim, loss=cfg.loss, params=method_params(CACHParams, cfg),
                seed=cfg.train.seed)


METHOD = LearnedMethod(
    name="cach", display="CACH", build=build, optimizers=duch_optimizers, callbacks=target_refresh,
    # Ablations: each switches one piece off (tfduch reproduce --methods cach-no-similarity,...).
    variants={
        "cach-no-similarity": Variant(("model.params.similarity=false",)),
        "cach-no-contrastive": Variant(("model.params.contrastive=false",)),
        "cach-no-autoencoder": Variant(("model.params.cross_autoencoder=false",)),
        "cach-no-consistency": Variant(("model.params.consistency=false",)),
        "cach-pairwise-only": Variant(("model.params.scales={pairwise: 1.0, neighbourhood: 0.0, cluster: 0.0}",)),
        "cach-no-cluster": Variant(("model.params.scales.cluster=0.0",)),
        "cach-adversarial": Variant(("model.params.adversarial=true",)),
    },
)
