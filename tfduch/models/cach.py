"""CACH: unsupervised Contrastive hashing with Autoencoder semantic similarity for Cross-modal Hashing.

Liu, Wu, Huang, Chen, Li, Wan, IEEE JSTARS 2025. Only the abstract is public; every choice it leaves
open is made and justified in ``docs/cach.md``. In short, per modality:

    frozen encoder features (feature-extraction module)
      → intermediate layer (d → hidden → BN → ReLU)  →  hash layer (→ K, tanh)

and the hashing heads are trained with a multi-objective loss whose pieces can each be switched
off (``model.params``) for ablation:

1. multiscale semantic similarity constraints — code cosines (image–image, text–text, image–text)
   reproduce a target built from the frozen features at three scales
   (:func:`tfduch.losses.similarity.multiscale_similarity`);
2. contrastive learning — DUCH's NT-Xent, inter-modal (image ↔ caption) and intra-modal (two views);
3. cross-autoencoding — each modality's code reconstructs the other modality's features
   (:class:`tfduch.models.cross_autoencoder.CrossAutoencoder`), and the reconstruction hashed again by
   the other modality's head is compared with that modality's code;

plus DUCH's quantization (β) and bit-balance (γ) terms. DUCH's adversarial term is off by default
(the abstract does not name it) and can be switched on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from tfduch.config import LossConfig
from tfduch.losses import bit_balance_loss, generator_loss, quantization_loss
from tfduch.losses.reconstruction import code_consistency_loss, feature_reconstruction_loss
from tfduch.losses.similarity import SCALES, code_similarity_loss, multiscale_similarity
from tfduch.models.cross_autoencoder import CrossAutoencoder
from tfduch.models.duch import DUCH

LOSS_NAMES = ("loss", "contrastive", "similarity", "reconstruction", "consistency", "adversarial", "quantization",
              "bit_balance", "discriminator")


def _default_scales() -> dict[str, float]:
    return {"pairwise": 1.0, "neighbourhood": 1.0, "cluster": 1.0}


@dataclass(frozen=True)
class CACHParams:
    """CACH's own hyper-parameters and ablation switches (``model.params``); see ``docs/cach.md``."""

    # (1) multiscale semantic similarity constraints
    similarity: bool = True
    similarity_weight: float = 1.0
    scales: dict[str, float] = field(default_factory=_default_scales)  # weight of each scale in the target
    image_weight: float = 0.2  # share of the image features in the pairwise similarity (text is cleaner)
    knn: int = 10  # neighbours per item in the cluster scale
    intra_weight: float = 1.0  # image–image and text–text constraints
    inter_weight: float = 1.0  # image–text constraint
    # (2) contrastive learning (weights and temperature: loss.contrastive_weights, loss.temperature)
    contrastive: bool = True
    # (3) cross-autoencoding
    cross_autoencoder: bool = True
    reconstruction_weight: float = 1.0
    consistency: bool = True  # re-hash the reconstructions and compare with the other modality's codes
    consistency_weight: float = 1.0
    decoder_hidden: int = 1024
    # DUCH's remaining terms (weights: loss.alpha, loss.beta, loss.gamma)
    adversarial: bool = False
    quantization: bool = True
    bit_balance: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.scales) - set(SCALES)
        if unknown:
            raise ValueError(f"CACH params.scales: unknown scales {sorted(unknown)}; choose from {SCALES}")
        if self.similarity and not any(self.scales.values()):
            raise ValueError("CACH params.scales: every scale has weight 0; set params.similarity=false instead")
        if self.knn < 1:
            raise ValueError("CACH params.knn must be >= 1")
        if not 0.0 <= self.image_weight <= 1.0:
            raise ValueError("CACH params.image_weight must be in [0, 1]")


class CACH(DUCH):
    """DUCH's heads, targets and (optional) discriminator, plus the cross-autoencoder and CACH's loss."""

    def __init__(self, image_dim: int, text_dim: int, bits: int, num_train: int, hidden_dim: int = 4096,
                 loss: dict[str, Any] | LossConfig | None = None, params: CACHParams | dict[str, Any] | None = None,
                 seed: int = 0, **kwargs: Any):
        super().__init__(image_dim, text_dim, bits, num_train, hidden_dim, loss=loss, seed=seed, **kwargs)
        self.params = params if isinstance(params, CACHParams) else CACHParams(**(params or {}))
        self.cross_autoencoder = CrossAutoencoder(self.bits, self.image_dim, self.text_dim,
                                                  self.params.decoder_hidden, name="cross_autoencoder")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}

    @property
    def hashing_variables(self) -> list[keras.Variable]:
        extra = self.cross_autoencoder.trainable_variables if self.params.cross_autoencoder else []
        return super().hashing_variables + extra

    def semantic_target(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        """The multiscale target ``S`` of the batch; the text side averages the two captions."""
        p = self.params
        text = (batch["text"] + batch["text_aug"]) / 2.0
        return multiscale_similarity(batch["image"], text, p.scales, p.image_weight, p.knn)

    def cach_losses(self, codes: dict[str, tf.Tensor], batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Every term, unweighted, and the weighted total under ``loss`` (switched-off terms are 0)."""
        p, cfg = self.params, self.loss_config
        h_i, h_t = codes["image"], codes["text"]
        zero = tf.constant(0.0)
        terms = dict.fromkeys(LOSS_NAMES[1:-1], zero)
        total = zero
        if p.contrastive:
            w_inter, w_img, w_txt = cfg.contrastive_weights
            terms["contrastive"] = (w_inter * self.contrastive(h_i, h_t)
                                    + w_img * self.contrastive(h_i, codes["image_aug"])
                                    + w_txt * self.contrastive(h_t, codes["text_aug"]))
            total += terms["contrastive"]
        if p.similarity:
            target = self.semantic_target(batch)
            terms["similarity"] = (p.intra_weight * (code_similarity_loss(h_i, h_i, target)
                                                     + code_similarity_loss(h_t, h_t, target))
                                   + p.inter_weight * code_similarity_loss(h_i, h_t, target))
            total += p.similarity_weight * terms["similarity"]
        if p.cross_autoencoder:
            recon = self.cross_autoencoder({"image": h_i, "text": h_t}, training=True)
            image_centre = tf.reduce_mean(batch["image"], axis=0, keepdims=True)
            text_centre = tf.reduce_mean(batch["text"], axis=0, keepdims=True)
            terms["reconstruction"] = (feature_reconstruction_loss(recon["text"], batch["text"] - text_centre)
                                       + feature_reconstruction_loss(recon["image"], batch["image"] - image_centre))
            total += p.reconstruction_weight * terms["reconstruction"]
            if p.consistency:
                # Inference-mode heads: the reconstructions must not move the heads' batch statistics.
                rehashed_t = self.text_head(recon["text"] + text_centre, training=False)
                rehashed_i = self.image_head(recon["image"] + image_centre, training=False)
                terms["consistency"] = code_consistency_loss(rehashed_t, h_t) + code_consistency_loss(rehashed_i, h_i)
                total += p.consistency_weight * terms["consistency"]
        views = [h_i, codes["image_aug"], h_t, codes["text_aug"]]
        if p.adversarial and cfg.alpha:
            fooling = views[:2] if cfg.adversarial_branch == "image" else views[2:]
            terms["adversarial"] = generator_loss([self.discriminator(h, training=True) for h in fooling])
            total += cfg.alpha * terms["adversarial"]
        if p.quantization:
            terms["quantization"] = quantization_loss(self.code_targets.lookup(batch["index"]), views)
            total += cfg.beta * terms["quantization"]
        if p.bit_balance:
            terms["bit_balance"] = bit_balance_loss(views, cfg.bit_balance)
            total += cfg.gamma * terms["bit_balance"]
        terms["loss"] = total
        return terms

    @property
    def trains_discriminator(self) -> bool:
        return bool(self.params.adversarial) and super().trains_discriminator

    def objective(self, codes: dict[str, tf.Tensor], batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.cach_losses(codes, batch)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "params": dataclasses.asdict(self.params)}
